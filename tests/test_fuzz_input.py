"""Bad input through the public API, on every store: each input is either stored and read
back exactly, or refused with a clear error and nothing written.

Clear errors are ``ConveyorError`` (``PayloadError`` for data that is not JSON),
``ValueError`` (pydantic's ``ValidationError`` for bad options) and ``TypeError`` (a
name that is not a string). Anything else, a partial write or a value that comes back
changed is a failure naming the store and the input.
"""

from __future__ import annotations

import math
import os
import reprlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability.stores import drop_location, make_store, new_location, skip_unless_available

from conveyor_core import ConveyorError, FlowProducer, JobState, Queue
from conveyor_core.store import StoreInterface

pytestmark = pytest.mark.anyio

SCALE = max(1, int(os.environ.get("CONVEYOR_FAULT_SCALE", "1")))
STEP_TIMEOUT = 20.0
CLEAR_ERRORS = (ConveyorError, ValueError, TypeError)
FUZZ = settings(
    max_examples=40 * SCALE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

ODD_TEXT = st.one_of(
    st.text(),
    st.sampled_from(
        [
            "",
            "'; DROP TABLE jobs; --",
            '"quoted"',
            "a:b:c",
            "{braces}",
            "{",
            "}",
            "%s %d %%",
            "*",
            "?[a]",
            "line\nbreak\r\n",
            "nul\x00byte",
            "\ud800 lone surrogate",
            "emoji \U0001f600 \u2603",
            "\u202e right-to-left",
            "x" * 10_000,
            " ",
            "\\",
            "$1",
            "KEYS *",
        ]
    ),
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**70),
    st.floats(),
    ODD_TEXT,
)
WEIRD = st.one_of(
    st.binary(max_size=10),
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
    st.just(object()),
    st.complex_numbers(),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
PAYLOADS = st.recursive(
    st.one_of(SCALARS, WEIRD),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(ODD_TEXT, inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(), st.none(), st.booleans()), inner, max_size=2),
    ),
    max_leaves=20,
)
OPTION_VALUES = st.one_of(
    SCALARS,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["type", "delay", "jitter", "x"]), SCALARS, max_size=3),
)
OPTION_KEYS = st.sampled_from(
    [
        "job_id",
        "priority",
        "lifo",
        "delay",
        "attempts",
        "backoff",
        "timeout",
        "remove_on_complete",
        "remove_on_fail",
        "fail_parent_on_child_failure",
        "fail_parent_on_failure",
        "continue_parent_on_failure",
        "ignore_dependency_on_failure",
        "remove_dependency_on_failure",
        "unknown",
    ]
)
OPTIONS = st.dictionaries(OPTION_KEYS, OPTION_VALUES, max_size=4)


def plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"d": [value]}
    return value


STORE_KINDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StoreInterface]:
    skip_unless_available(request.param)
    location = new_location(request.param, str(tmp_path))
    try:
        async with make_store(location) as opened:
            yield opened
    finally:
        await drop_location(location)


def show(value: Any) -> str:
    """A short repr that survives deep nesting."""
    return reprlib.repr(value)


def fresh(stem: str = "fuzz") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


async def nothing_written(store: StoreInterface, queue: str, what: str) -> None:
    try:
        counts = await store.get_counts(queue)
    except CLEAR_ERRORS:
        counts = {}  # a name the store cannot even encode (a lone surrogate): nothing to read
    assert sum(counts.values()) == 0, f"{store!r}: {what} was refused but wrote {counts}"
    assert queue not in await store.list_queues(), f"{store!r}: {what} left queue {queue!r}"


async def add_or_refuse(store: StoreInterface, queue_name: str, data: Any, **kw: Any) -> None:
    # A store that hangs after bad input fails here instead of stalling the run.
    with anyio.fail_after(STEP_TIMEOUT):
        await _add_or_refuse(store, queue_name, data, **kw)


async def _add_or_refuse(store: StoreInterface, queue_name: str, data: Any, **kw: Any) -> None:
    queue = Queue(queue_name, store=store)
    try:
        job = await queue.add(kw.pop("name", "job"), data, kw.pop("opts", None))
    except CLEAR_ERRORS as exc:
        await nothing_written(
            store, queue_name, f"data {show(data)} ({type(exc).__name__}: {show(str(exc))})"
        )
        return
    read = await queue.get_job(job.id)
    assert read is not None, f"{store!r}: job {job.id!r} added but not found"
    assert read.data == plain(data), f"{store!r}: data changed: {show(read.data)}"
    assert read.state in (JobState.WAITING, JobState.DELAYED)


@FUZZ
@given(data=PAYLOADS)
async def test_payloads_round_trip_or_are_refused(store: StoreInterface, data: Any) -> None:
    await add_or_refuse(store, fresh(), data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("x" * 2_000_000, id="2MB-string"),
        pytest.param(deep(200), id="deep-200"),
        pytest.param(deep(5_000), id="deep-5000"),
        pytest.param({"a": "\ud800"}, id="lone-surrogate"),
        pytest.param({"a": "nul\x00"}, id="nul"),
        pytest.param({1: "int key"}, id="int-key"),
        pytest.param({"a": b"bytes"}, id="bytes"),
        pytest.param({"a": {1, 2}}, id="set"),
        pytest.param([math.nan], id="nan"),
        pytest.param(10**400, id="huge-int"),
        pytest.param(-0.0, id="negative-zero"),
        pytest.param(1e308, id="big-float"),
    ],
)
async def test_edge_payloads(store: StoreInterface, data: Any) -> None:
    await add_or_refuse(store, fresh(), data)


@FUZZ
@given(queue_name=ODD_TEXT, job_name=ODD_TEXT, job_id=st.one_of(st.none(), ODD_TEXT))
async def test_names_and_ids_are_data(
    store: StoreInterface, queue_name: str, job_name: str, job_id: str | None
) -> None:
    # A per-example suffix keeps examples apart; the odd part is kept whole.
    queue_name = f"{queue_name}{uuid.uuid4().hex[:6]}" if queue_name else queue_name
    opts = None if job_id is None else {"job_id": job_id}
    with anyio.fail_after(STEP_TIMEOUT):
        await _names(store, queue_name, job_name, job_id, opts)


async def _names(
    store: StoreInterface,
    queue_name: str,
    job_name: str,
    job_id: str | None,
    opts: dict[str, Any] | None,
) -> None:
    try:
        queue = Queue(queue_name, store=store)
        job = await queue.add(job_name, {"k": 1}, opts)
    except CLEAR_ERRORS as exc:
        if queue_name:
            await nothing_written(
                store, queue_name, f"names {show(queue_name)}/{show(job_name)}/{show(job_id)}"
            )
        assert str(exc), "a refusal must say why"
        return
    read = await queue.get_job(job.id)
    assert read is not None, f"{store!r}: job {job.id!r} in {queue_name!r} not found"
    assert (read.name, read.queue_name, read.data) == (job_name, queue_name, {"k": 1})
    if job_id is not None:
        assert read.id == job_id
    assert queue_name in await store.list_queues()
    again = await queue.add(job_name, {"k": 2}, opts)
    if job_id is not None:
        assert again.id == job_id and again.data == {"k": 1}, "an existing id must not be rewritten"
    counts = await queue.get_job_counts()
    assert counts["waiting"] == (1 if job_id is not None else 2)


@FUZZ
@given(opts=OPTIONS)
async def test_random_options_are_valid_or_refused(
    store: StoreInterface, opts: dict[str, Any]
) -> None:
    queue_name = fresh()
    queue = Queue(queue_name, store=store)
    try:
        job = await queue.add("job", {"x": 1}, opts)
    except CLEAR_ERRORS:
        await nothing_written(store, queue_name, f"options {show(opts)}")
        return
    read = await queue.get_job(job.id)
    assert read is not None
    assert read.opts == job.opts, f"{store!r}: options changed: {read.opts} != {job.opts}"


@FUZZ
@given(bad=st.one_of(WEIRD, OPTIONS), position=st.integers(0, 3), as_opts=st.booleans())
async def test_bulk_and_flow_with_one_bad_item_write_nothing(
    store: StoreInterface, bad: Any, position: int, as_opts: bool
) -> None:
    names = [fresh("bulk"), fresh("flow")]
    items: list[dict[str, Any]] = [{"name": f"n{i}", "data": {"i": i}} for i in range(4)]
    if as_opts:
        items[position]["opts"] = bad
    else:
        items[position]["data"] = bad
    try:
        await Queue(names[0], store=store).add_bulk(items)
    except CLEAR_ERRORS:
        await nothing_written(store, names[0], f"add_bulk with {show(bad)}")
    tree: dict[str, Any] = {"name": "root", "queue_name": names[1], "data": {}}
    node = tree
    for i in range(4):
        child = {"name": f"c{i}", "queue_name": names[i % 2], "data": {"i": i}}
        if i == position:
            child["opts" if as_opts else "data"] = bad
        node["children"] = [child, {"name": f"s{i}", "queue_name": names[1]}]
        node = child
    before = sum((await store.get_counts(names[0])).values())
    try:
        await FlowProducer(store=store).add(tree)
    except CLEAR_ERRORS:
        after = sum((await store.get_counts(names[0])).values())
        assert after == before, f"{store!r}: a refused flow wrote jobs"
        await nothing_written(store, names[1], f"flow with {show(bad)}")
