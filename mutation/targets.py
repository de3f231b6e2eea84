"""The mutation targets of this project: which file, which packages, which suite."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .runner import Target

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = Path(__file__).resolve().parent / "equivalent.toml"

_STORES = {
    "memory": (
        "from conveyor_stores import MemoryStore",
        "MemoryStore()",
        False,
    ),
    "sqlite": (
        "from conveyor_stores.sqlite import SQLiteStore",
        'SQLiteStore(str(tmp_path / "conveyor.db"))',
        True,
    ),
}
STORES = tuple(_STORES)
"""Stores whose transitions run ``conveyor_core/engine.py`` (the PostgreSQL and Redis
stores run their own server-side code)."""

_SUITE = '''"""The conformance suite against {store}, judging mutants."""

import pytest

from conveyor_core.conformance import StoreConformance
{imports}


class TestConformance(StoreConformance):
    timeout = {timeout}

    @pytest.fixture
    async def store(self, tmp_path):
        async with {make} as store:
            yield store
{second}'''

_SECOND = """
    @pytest.fixture
    async def second_store(self, tmp_path):
        async with {make} as store:
            yield store
"""


WAIT_SECONDS = 5.0
"""Each wait of the suite, shorter than its default: a mutant that breaks a flow makes
tests wait for conditions that never come true, and the unmutated suite still passes
with a wide margin on a busy machine."""


def conformance_suite(store: str, wait: float = WAIT_SECONDS) -> str:
    """A test module running the conformance suite on ``store``."""
    try:
        imports, make, shared = _STORES[store]
    except KeyError:
        raise ValueError(f"unknown store {store!r} (known: {', '.join(STORES)})") from None
    second = _SECOND.format(make=make) if shared else ""
    return _SUITE.format(store=store, imports=imports, make=make, second=second, timeout=repr(wait))


def engine(store: str = "memory", root: Path = ROOT) -> Target:
    """``conveyor_core/engine.py`` judged by the conformance suite on ``store``."""
    return Target(
        name="engine",
        root=root,
        path="conveyor_core/engine.py",
        packages=("conveyor_core", "conveyor_stores"),
        suite_files={"test_conformance_mutation.py": conformance_suite(store)},
    )


TARGETS = {"engine": engine}


def equivalent(target: str, path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """Mutant ids of ``target`` known to be equivalent, each with the reason."""
    if not path.exists():
        return {}
    with path.open("rb") as source:
        data = tomllib.load(source)
    section = data.get(target, {})
    return {str(key): str(value["why"]) for key, value in section.items()}
