"""Every Python block of the README and of ``docs/`` runs, the way a reader would run it.

Each block runs in a fresh interpreter (``tests/docs_runner.py``), in an empty temporary
directory, and must end by itself within a minute. The rules, all visible on the pages:

- A block may use top-level ``await``, as in ``python -m asyncio``. If it uses ``store``
  without defining it, it gets a connected store, as the page says: a ``MemoryStore``, or
  on the PostgreSQL and Redis pages a store on the test server.
- On those two pages the example server URLs (``postgresql://app@db.internal/app``,
  ``redis://cache.internal:6379/0``) stand for the test servers, and every store gets a
  fresh schema or key prefix, removed after the block. Without a server these blocks
  skip, or fail under ``CONVEYOR_REQUIRE_ALL_STORES=1`` (see ``conftest.py``).
- A block whose first line is ``# Appended to the setup above.`` runs after the last
  block before it that is not so marked, in the same interpreter.
- A block whose last lines are comments prints exactly those lines.
- A block defining a ``Test...`` class is a test module: pytest runs a few of its tests
  (those named in ``CONFORMANCE_SAMPLE``; the whole suite runs in
  ``test_conformance_*.py``).
- A block whose first line is ``# Not runnable on its own: <why>`` is only compiled.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "docs_runner.py"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TIMEOUT = 60.0
"""Seconds a block may take before it counts as hanging."""

NOT_RUNNABLE = re.compile(r"# Not runnable on its own: \S")
APPENDED = "# Appended to the setup above."
PG_PLACEHOLDER = "postgresql://app@db.internal/app"
REDIS_PLACEHOLDER = "redis://cache.internal:6379/0"
CONFORMANCE_SAMPLE = (
    "events_reach_a_listener_on_another_store_object or racing_workers_run_each_job_exactly_once"
)
"""Tests of the suite that use both ``store`` and ``second_store``."""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    setup: str | None
    """The code of the block this one is appended to."""

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return not NOT_RUNNABLE.match(self.code)

    @property
    def source(self) -> str:
        """What runs: the setup, if any, then the block."""
        return self.code if self.setup is None else f"{self.setup}\n{self.code}"

    @property
    def store(self) -> str:
        return {"postgres.md": "postgres", "redis.md": "redis"}.get(self.page.name, "memory")


def python_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    setup: str | None = None
    for token in MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8")):
        if token.type != "fence" or token.info.split()[:1] not in (["python"], ["py"]):
            continue
        assert token.map is not None
        line = token.map[0] + 1
        if token.content.startswith(APPENDED):
            assert setup is not None, f"{page}:{line} is appended to no block"
            blocks.append(Block(page, line, token.content, setup))
        else:
            blocks.append(Block(page, line, token.content, None))
            setup = token.content
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def expected_output(code: str) -> list[str] | None:
    """The trailing comment lines of a block, without their ``# ``, if there are any."""
    lines = code.rstrip("\n").split("\n")
    trailing: list[str] = []
    while lines and lines[-1].startswith("#"):
        trailing.insert(0, lines.pop().removeprefix("#").removeprefix(" "))
    if not trailing or not lines:
        return None
    return trailing


def is_test_module(code: str) -> bool:
    return any(
        isinstance(node, ast.ClassDef) and node.name.startswith("Test")
        for node in ast.parse(code).body
    )


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        # The schema name is made by this module: letters, digits and underscores only.
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _delete_prefix(url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runnable], ids=lambda block: block.id)
def test_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    source = block.source
    settings: dict[str, str] = {"store": block.store}
    if block.store == "postgres":
        settings["dsn"] = request.getfixturevalue("pg_dsn")
        settings["schema"] = f"conveyor_docs_{uuid.uuid4().hex[:12]}"
        source = source.replace(PG_PLACEHOLDER, settings["dsn"])
    elif block.store == "redis":
        settings["url"] = request.getfixturevalue("redis_url")
        settings["prefix"] = f"conveyor-docs-{uuid.uuid4().hex[:12]}"
        source = source.replace(REDIS_PLACEHOLDER, settings["url"])

    if is_test_module(block.code):
        path = tmp_path / "test_block.py"
        command = [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider"]
        command += ["-k", CONFORMANCE_SAMPLE]
    else:
        path = tmp_path / "block.py"
        command = [sys.executable, str(RUNNER), str(path), json.dumps(settings)]
    path.write_text(source, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    try:
        result = subprocess.run(
            command,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        if block.store == "postgres":
            anyio.run(_drop_schema, settings["dsn"], settings["schema"])
        elif block.store == "redis":
            anyio.run(_delete_prefix, settings["url"], settings["prefix"])

    assert result.returncode == 0, (
        f"{block.id} failed (exit code {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    if is_test_module(block.code):
        assert re.search(r"\b2 passed\b", result.stdout), result.stdout
    expected = expected_output(block.code)
    if expected is not None:
        assert result.stdout.rstrip("\n").split("\n") == expected, result.stdout


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.runnable], ids=lambda block: block.id)
def test_block_not_run_still_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_every_page_is_read() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "index.md", "concepts.md", "flows.md", "conformance.md"} <= names
    assert len(BLOCKS) >= 10
