"""Run the conformance suite against a store factory named ``module:callable``."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conveyor_core.store import StoreInterface

__all__ = ["conformance_class", "load_factory", "open_from_factory", "run"]

_ANYIO_PLUGIN = ["-p", "anyio"] if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") else []
"""pytest loads anyio's plugin by itself unless plugin autoloading is off."""

_MODULE = """\
from conveyor_core.conformance.runner import conformance_class

TestStoreConformance = conformance_class({factory!r}, shared={shared!r})
"""


def load_factory(factory_path: str) -> Callable[[], Any]:
    """The callable named by ``"package.module:callable"`` (dotted attributes allowed),
    or for a store URL (``scheme://…``) a callable that opens it."""
    if "://" in factory_path:
        from conveyor_core.registry import open_store

        open_store(factory_path)  # an unknown scheme or option fails here, clearly
        return functools.partial(open_store, factory_path)
    module_name, sep, attribute = factory_path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"a store factory is given as 'module:callable', got {factory_path!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"cannot find {part!r} of store factory {factory_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{factory_path!r} is not callable")
    return target  # type: ignore[no-any-return]


@asynccontextmanager
async def open_from_factory(factory: Callable[[], Any]) -> AsyncIterator[StoreInterface]:
    """Call ``factory`` and yield a connected store, closed afterwards.

    The factory may return a store that is not connected yet, an awaitable of one,
    or an async context manager yielding a connected store.
    """
    made = factory()
    if inspect.isawaitable(made):
        made = await made
    if isinstance(made, StoreInterface):
        async with made_as_context(made) as store:
            yield store
        return
    if isinstance(made, AbstractAsyncContextManager) or hasattr(made, "__aenter__"):
        async with made as store:
            yield store
        return
    raise TypeError(
        f"a store factory must return a store or an async context manager, "
        f"got {type(made).__name__}"
    )


@asynccontextmanager
async def made_as_context(store: StoreInterface) -> AsyncIterator[StoreInterface]:
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


def conformance_class(factory_path: str, *, shared: bool | None = None) -> type[Any]:
    """A ``StoreConformance`` subclass whose stores come from ``factory_path``.

    ``factory_path`` is ``"module:callable"`` or a store URL (``scheme://…``, opened with
    :func:`conveyor_core.registry.open_store` for each test).

    ``shared``: the factory returns a new object on the *same* database each call
    (a fixed file path or server URL), so ``second_store`` is a second object and
    cross-process behaviour is tested too; ``False``: ``second_store`` is ``store``.
    ``None`` (the default) follows the store's declared ``shared`` capability.
    """
    from conveyor_core.conformance import StoreConformance

    factory = load_factory(factory_path)

    class FactoryStoreConformance(StoreConformance):
        @pytest.fixture
        async def store(self) -> AsyncIterator[StoreInterface]:
            async with open_from_factory(factory) as store:
                yield store

        @pytest.fixture
        async def second_store(self, store: StoreInterface) -> AsyncIterator[StoreInterface]:
            if not (store.capabilities.shared if shared is None else shared):
                yield store
                return
            async with open_from_factory(factory) as second:
                yield second

    FactoryStoreConformance.__name__ = "TestStoreConformance"
    FactoryStoreConformance.__qualname__ = "TestStoreConformance"
    return FactoryStoreConformance


def run(factory_path: str, *, shared: bool | None = None, pytest_args: Sequence[str] = ()) -> int:
    """Run the suite against the stores made by ``factory_path``; pytest's exit code.

    ``factory_path`` is a store URL (``scheme://…``, opened anew for each test: it must
    name one database every test may write to) or ``"package.module:callable"``; the
    callable returns a store not
    yet connected (the suite connects and closes it), an awaitable of one, or an async
    context manager yielding a connected store. It is called once per test, and must
    give each call a database the test may write to (queue names are unique per test,
    so one shared database is fine). ``pytest_args`` go to pytest as they are
    (e.g. ``["-x", "-k", "flow"]``).

    pytest runs in a child process (its output goes to this process's stdout), so the
    suite gets a fresh interpreter with pytest's assertion rewriting; the current
    directory and this process's import path are importable there.
    """
    search_path = [str(Path.cwd()), *(entry for entry in sys.path if entry)]
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    load_factory(factory_path)  # fail early, with a clear error, on a bad path
    with tempfile.TemporaryDirectory(prefix="conveyor-conformance-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        module = directory / "test_store_conformance.py"
        module.write_text(_MODULE.format(factory=factory_path, shared=shared), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-c",
            str(directory / "pytest.ini"),
            "--rootdir",
            str(directory),
            *_ANYIO_PLUGIN,
            "-p",
            "no:cacheprovider",
            *pytest_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*search_path, *filter(None, [env.get("PYTHONPATH")])])
        return subprocess.run(command, env=env, check=False).returncode
