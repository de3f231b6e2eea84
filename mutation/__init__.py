"""Mutation testing of the project's own code: how much of it the suites pin down.

``python -m mutation engine --store memory`` mutates ``conveyor_core/engine.py`` (see
:mod:`mutation.mutators` for the kinds of change), runs the conformance suite against
each mutant in a private copy of the packages (:mod:`mutation.runner`) and reports the
score and the mutants the suite lets through. Known equivalent mutants, which no test
can kill, are listed with the reason in ``mutation/equivalent.toml``.
"""

from .mutators import MUTATORS, Mutant, Mutator, PythonMutator
from .runner import Outcome, Report, Target, run, select

__all__ = [
    "MUTATORS",
    "Mutant",
    "Mutator",
    "Outcome",
    "PythonMutator",
    "Report",
    "Target",
    "run",
    "select",
]
