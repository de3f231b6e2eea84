"""The JSON codec: what it accepts, and the errors a user sees."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest

from conveyor_core import PayloadError
from conveyor_core.codec import dumps, loads


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -3, 2.5, "", "naïve ☃", [], {}, [1, [2, {"a": None}]], {"k": {"n": [1.5]}}],
)
def test_json_values_round_trip(value: Any) -> None:
    assert loads(dumps(value, what="data")) == value


def test_output_is_compact_and_keeps_unicode() -> None:
    assert dumps({"a": [1, 2], "b": "é"}, what="data") == '{"a":[1,2],"b":"é"}'
    assert dumps((1, 2), what="data") == "[1,2]"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (b"raw", "bytes"),
        ({"when": datetime.datetime(2024, 1, 1)}, "datetime"),
        ([decimal.Decimal("1.5")], "Decimal"),
        ({"deep": [{"x": object()}]}, "object"),
        ({1: "a"}, "int"),
        ({"nested": {None: 1}}, "NoneType"),
        ({(1, 2): "a"}, "tuple"),
    ],
)
def test_non_json_values_name_what_and_type(value: Any, type_name: str) -> None:
    with pytest.raises(PayloadError) as info:
        dumps(value, what="data of job 'fetch' in queue 'reports'")
    message = str(info.value)
    assert message.startswith("data of job 'fetch' in queue 'reports' is not JSON")
    assert type_name in message


def test_nan_and_cycles_are_refused() -> None:
    with pytest.raises(PayloadError):
        dumps(float("inf"), what="result")
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(PayloadError):
        dumps(cycle, what="result")
