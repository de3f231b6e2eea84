"""The PostgreSQL store's SQL files: each parses (with PostgreSQL's own parser, through
pglast), each function file defines the function it is named for, and the creation
order lists every file. The store's tests then run them on a real server."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from conveyor_core.store import STALLED_REASON
from conveyor_stores.postgres import schema

pglast = pytest.importorskip("pglast", reason="pglast parses the SQL (pip install -e '.[dev]')")

SQL = resources.files("conveyor_stores.postgres").joinpath("sql")


def _render(text: str) -> str:
    return schema.render(text, "conveyor_check", "conveyor_check_events", STALLED_REASON)


def _files(folder: str) -> dict[str, str]:
    return {
        entry.name.removesuffix(".sql"): entry.read_text(encoding="utf-8")
        for entry in SQL.joinpath(folder).iterdir()
        if entry.name.endswith(".sql")
    }


def test_every_function_file_is_created_once_in_order() -> None:
    assert sorted(schema.FUNCTIONS) == sorted(_files("functions"))
    assert len(set(schema.FUNCTIONS)) == len(schema.FUNCTIONS)


@pytest.mark.parametrize("name", schema.FUNCTIONS)
def test_a_function_file_parses_and_defines_its_function(name: str) -> None:
    text = _render(schema.function_sql(name))
    statements = pglast.parse_sql(text)
    assert len(statements) == 1, f"{name}.sql must hold exactly one statement"
    created = re.search(r'CREATE OR REPLACE FUNCTION "conveyor_check"\.(\w+)\(', text)
    assert created is not None and created.group(1) == name
    if re.search(r"LANGUAGE plpgsql", text):
        # The body, with PL/pgSQL's own grammar. Offline, that parser knows no tables:
        # a parameter typed as the jobs table's rows is read as text arrays here.
        body = _render(schema.function_sql(name)).replace('"conveyor_check".jobs[]', "text[]")
        pglast.parse_plpgsql(body)


@pytest.mark.parametrize("name", sorted(_files("migrations")))
def test_a_migration_parses(name: str) -> None:
    assert pglast.parse_sql(_render(schema.migration_sql(name)))


def test_a_change_to_the_functions_comes_with_a_migration_step() -> None:
    # A schema at the latest version runs no step when a store opens it, so functions
    # changed without a step of their own would never reach an existing schema.
    assert schema.functions_digest() == schema.FUNCTIONS_DIGEST, (
        "the functions changed since the latest migration step: add a step "
        f"({schema.LATEST + 1}, all_functions_sql()) to MIGRATIONS and set "
        f"FUNCTIONS_DIGEST = {schema.functions_digest()!r}"
    )
