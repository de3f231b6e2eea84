"""``python -m mutation engine --store memory``: measure the conformance suite."""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import runner, targets
from .ledger import DETECTED, UNCOVERED, Ledger


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mutation",
        description=(
            "Mutate a file of the project, run its suite against every mutant in a private "
            "copy of the packages, and report the score and the surviving mutants."
        ),
    )
    parser.add_argument("target", choices=sorted(targets.TARGETS), help="what to mutate")
    parser.add_argument(
        "--store",
        choices=targets.STORES,
        help="store the suite runs on (engine: memory or sqlite, memory by default; "
        "sql: postgres; lua: redis)",
    )
    parser.add_argument("--sample", type=int, metavar="N", help="judge a random N mutants")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample")
    parser.add_argument(
        "--skip-equivalent",
        action="store_true",
        help="leave out the mutants listed as equivalent (mutation/equivalent.toml): a "
        "listed one survives by design and runs every test that concerns it",
    )
    parser.add_argument("--only", action="append", default=[], metavar="ID", help="mutant id")
    parser.add_argument("--jobs", type=int, default=1, metavar="J", help="parallel runs")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="limit for one mutant's run"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--list-invalid", action="store_true", help="with --list: also the invalid ones"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the full report")
    parser.add_argument(
        "--ledger",
        type=Path,
        metavar="PATH",
        help="keep each outcome in this file as it comes and take the kills it holds "
        "from it (a whole run made in parts; see mutation/ledger.py)",
    )
    return parser


def _progress(outcome: runner.Outcome, done: int, total: int) -> None:
    mark = "." if outcome.status in DETECTED else "S"
    end = "\n" if done % 60 == 0 or done == total else ""
    print(mark, end=end, file=sys.stderr, flush=True)
    if outcome.status not in DETECTED:
        print(f"\n  {outcome.status}  {outcome.mutant.describe()}", file=sys.stderr, flush=True)


def _when() -> str:
    """The date and the commit of the project, for the ledger's readers."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=targets.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{datetime.date.today().isoformat()} {commit}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Both stop a run cleanly, also one started in the background (where a shell leaves
    # SIGINT ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        target = targets.TARGETS[args.target](args.store)
        valid, invalid = runner.all_mutants(target)
        equivalent = targets.equivalent(args.target)
        mutants = runner.select(
            valid,
            only=args.only,
            sample=args.sample,
            seed=args.seed,
            skip=equivalent if args.skip_equivalent else (),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    store = args.store or {"sql": "postgres", "lua": "redis"}.get(args.target, "memory")
    if args.list:
        for mutant in mutants:
            print(mutant.describe())
        if args.list_invalid:
            for mutant, why in invalid:
                print(f"invalid  {mutant.describe()}  ({why})")
        print(f"{len(mutants)} mutants")
        if invalid:
            print(f"{len(invalid)} more are not valid programs (--list-invalid lists them)")
        return 0
    if invalid:
        print(f"{len(invalid)} mutants are not valid programs: not run", file=sys.stderr)
    try:
        ledger = None if args.ledger is None else Ledger(args.ledger, args.target)
        report = runner.run(
            target,
            mutants,
            jobs=args.jobs,
            timeout=args.timeout,
            equivalent=equivalent,
            progress=_progress,
            ledger=ledger,
            judged=_when(),
        )
    except (runner.BaselineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(f"\n{args.target} on the {store} store: {len(report.outcomes)} mutants")
    reused = sum(outcome.reused for outcome in report.outcomes)
    if reused:
        print(f"  {reused} killed ones taken from the ledger {args.ledger}")
    for outcome in report.open_survivors:
        note = " (no test runs this line)" if outcome.status == UNCOVERED else ""
        print(f"  survived  {outcome.mutant.describe()}{note}")
    for outcome in report.stale_equivalents:
        print(f"  listed as equivalent but killed  {outcome.mutant.describe()}")
    print(
        f"killed {len(report.killed)}, equivalent {len(report.equivalent_survivors)}, "
        f"surviving {len(report.open_survivors)}; "
        f"score {report.score:.1%} of {len(report.outcomes) - len(report.equivalent_survivors)} "
        "non-equivalent mutants"
    )
    return 0 if not report.open_survivors else 1


if __name__ == "__main__":
    sys.exit(main())
