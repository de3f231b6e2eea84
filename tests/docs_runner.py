"""Runs one Python block of the documentation, as ``tests/test_docs.py`` asks it to.

``python docs_runner.py BLOCK.py SETTINGS_JSON`` runs the block in a fresh interpreter,
in the current directory. A block may use top-level ``await`` (as in ``python -m
asyncio``); then it runs on an event loop. If the block uses the name ``store`` without
defining it, it gets a connected store, as the page it comes from says.

Settings: ``store`` is ``"memory"``, ``"postgres"`` or ``"redis"``. For the last two,
``dsn``/``url`` is the test server and ``schema``/``prefix`` a fresh name, which every
``PostgresStore``/``RedisStore`` the block makes gets in place of the default
``"conveyor"``, so the block never touches anyone else's data.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import sys
from typing import Any

import anyio

import conveyor_stores
from conveyor_core.store import StoreInterface


def _use_fresh_names(settings: dict[str, Any]) -> None:
    """Make every store of the block use the fresh schema or prefix of the test."""
    if settings["store"] == "postgres":
        module: Any = importlib.import_module("conveyor_stores.postgres")
        base: Any = module.PostgresStore
        name, fresh = "schema", settings["schema"]
    elif settings["store"] == "redis":
        module = importlib.import_module("conveyor_stores.redis")
        base = module.RedisStore
        name, fresh = "prefix", settings["prefix"]
    else:
        return

    class Fresh(base):  # type: ignore[misc]
        def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
            if args:
                args = (fresh if args[0] == "conveyor" else args[0], *args[1:])
            elif kwargs.get(name, "conveyor") == "conveyor":
                kwargs[name] = fresh
            super().__init__(url, *args, **kwargs)

    Fresh.__name__ = Fresh.__qualname__ = base.__name__
    setattr(module, base.__name__, Fresh)
    setattr(conveyor_stores, base.__name__, Fresh)


def _provided_store(settings: dict[str, Any]) -> StoreInterface:
    if settings["store"] == "postgres":
        return conveyor_stores.open_store(settings["dsn"])
    if settings["store"] == "redis":
        return conveyor_stores.open_store(settings["url"])
    return conveyor_stores.open_store("memory://")


def _binds(tree: ast.AST, name: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == name and not isinstance(node.ctx, ast.Load):
            return True
        if isinstance(node, ast.arg | ast.FunctionDef | ast.AsyncFunctionDef) and (
            getattr(node, "arg", None) == name or getattr(node, "name", None) == name
        ):
            return True
    return False


def _uses(tree: ast.AST, name: str) -> bool:
    return any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(tree))


def main(path: str, settings_json: str) -> None:
    settings = json.loads(settings_json)
    with open(path, encoding="utf-8") as file:
        source = file.read()
    _use_fresh_names(settings)
    tree = ast.parse(source, path)
    # The block is documentation of this repository, run as its reader would run it.
    code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    needs_store = _uses(tree, "store") and not _binds(tree, "store")

    async def run_async() -> None:
        if needs_store:
            async with _provided_store(settings) as store:
                namespace["store"] = store
                result = eval(code, namespace)
                if inspect.isawaitable(result):
                    await result
        else:
            result = eval(code, namespace)
            if inspect.isawaitable(result):
                await result

    if needs_store or code.co_flags & inspect.CO_COROUTINE:
        anyio.run(run_async)
    else:
        exec(code, namespace)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
