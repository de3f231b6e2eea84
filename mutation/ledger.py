"""A ledger of judged mutants, so a whole run of hours can be made in parts.

``python -m mutation sql --ledger mutation/ledger/sql.jsonl`` reads the ledger first and
writes each mutant's outcome to it as soon as the mutant is judged: a run that is
stopped loses only the mutants in progress, and the next run with the same ledger goes
on where it stopped.

An entry is one line of JSON (sorted by mutant id, so the file diffs well). A killed
mutant is taken from the ledger, not run again, only while both hold:

- the file it changes is byte for byte the file it was judged on (its digest), so the
  mutant is the same change in the same program;
- the test that killed it is still in the suite (the unmutated run lists every test).

A mutant that survived, or whose file or killing test changed, is judged again. So a
suite that grows keeps its kills, and a survivor is always measured by today's suite.
Survivors of the same file are judged again last, after the mutants the ledger has no
verdict for: a run made in parts reaches new mutants first.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .mutators import Mutant

KILLED = "killed"
TIMEOUT = "timeout"
ERROR = "error"
SURVIVED = "survived"
UNCOVERED = "uncovered"
DETECTED = (KILLED, TIMEOUT, ERROR)
"""The statuses of a judged mutant (``mutation.runner`` names them to its callers)."""


def digest(text: str) -> str:
    """The digest an entry keeps of the file its mutant changes."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    id: str
    path: str
    status: str
    file_digest: str
    killed_by: str | None
    """The first test that failed on the mutant (``None`` for a timeout or an error)."""
    judged: str
    """When: the date and the project's commit, for people."""


class Ledger:
    """The entries of one target, kept in a file of JSON lines."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        self.entries: dict[str, Entry] = {}
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    if raw.pop("target") != target:
                        raise ValueError(f"an entry of target {raw.get('target')!r}")
                    entry = Entry(**raw)
                except (ValueError, TypeError, KeyError) as error:
                    raise ValueError(f"{path}:{number}: not a ledger entry ({error})") from None
                self.entries[entry.id] = entry

    def reusable(self, mutant: Mutant, file_digest: str, tests: Collection[str]) -> Entry | None:
        """The entry of ``mutant`` if its kill still holds (see the module's docstring)."""
        entry = self.entries.get(mutant.id)
        if entry is None or entry.status not in DETECTED or entry.file_digest != file_digest:
            return None
        if entry.killed_by is not None and entry.killed_by not in tests:
            return None
        return entry

    def survived(self, mutant: Mutant, file_digest: str) -> bool:
        """Whether ``mutant`` survived its last judgement, made on this very file."""
        entry = self.entries.get(mutant.id)
        return entry is not None and entry.status == SURVIVED and entry.file_digest == file_digest

    def killers(self, scope_of: dict[str, str]) -> dict[str, list[str]]:
        """For each scope (``path`` and ``scope`` of a mutant), the tests that killed its
        mutants, the most frequent first: tried first on the other mutants there."""
        counts: dict[str, dict[str, int]] = {}
        for entry in self.entries.values():
            scope = scope_of.get(entry.id)
            if scope is None or entry.killed_by is None:
                continue
            tally = counts.setdefault(scope, {})
            tally[entry.killed_by] = tally.get(entry.killed_by, 0) + 1
        return {
            scope: sorted(tally, key=lambda test: -tally[test]) for scope, tally in counts.items()
        }

    def record(self, entries: Iterable[Entry]) -> None:
        """Add or replace entries and rewrite the file (atomically: a stopped run leaves
        the old file or the new one, never half of one)."""
        for entry in entries:
            self.entries[entry.id] = entry
        lines = [
            json.dumps({"target": self.target, **asdict(entry)}, sort_keys=True)
            for _, entry in sorted(self.entries.items())
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
        try:
            with os.fdopen(handle, "w") as out:
                out.write("".join(line + "\n" for line in lines))
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
