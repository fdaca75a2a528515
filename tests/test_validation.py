"""The fast field checks behind every record and config: a value they pass
must be one ``msgspec.convert`` takes unchanged, for every field of every
public struct (a value they fail goes to ``convert``, which decides)."""

from __future__ import annotations

import math
import typing

import msgspec
import pytest

import agentfly_min
from agentfly_min import ConfigError, Request
from agentfly_min._validation import _accepts, _checks

STRUCTS = sorted(
    (obj for name in agentfly_min.__all__ if isinstance(obj := getattr(agentfly_min, name), type) and issubclass(obj, msgspec.Struct)),
    key=lambda cls: cls.__name__,
)

VALUES: list[object] = [
    None, 0, 1, -1, 2, 256, 10**9, 0.0, 0.5, 1.0, 2.0, 2.5, -0.1, math.nan, math.inf, -math.inf, True, False,
    "", "a", "abc", "x" * 300, "with space", "line\nbreak", "Content-Type", "call_0", (), (1,), (1, 2, 3), ("a",), (0.5,),
]  # fmt: skip


def fields() -> list[tuple[str, object]]:
    found = []
    for cls in STRUCTS:
        for name, hint, accept, _default in _checks(cls):
            if accept is not None:
                found.append((f"{cls.__name__}.{name}", hint))
    return found


def test_every_public_struct_has_fast_checks_for_its_constrained_fields() -> None:
    constrained = [name for name, hint in fields() if typing.get_origin(hint) is typing.Annotated or "Meta(" in repr(hint)]
    assert "Request.temperature" in constrained and "Request.max_new_tokens" in constrained
    assert len(STRUCTS) >= 10


@pytest.mark.parametrize(("field", "hint"), fields(), ids=[name for name, _ in fields()])
def test_a_value_the_fast_check_passes_is_one_convert_takes_unchanged(field: str, hint: object) -> None:
    accept = _accepts(hint)
    assert accept is not None
    for value in VALUES:
        if accept(value):
            converted = msgspec.convert(value, hint, strict=True)
            same = converted == value or (isinstance(value, float) and math.isnan(value) and math.isnan(converted))
            assert same and type(converted) is type(value), f"{field}: {value!r}"


@pytest.mark.parametrize(
    ("fields_", "where"),
    [
        ({"temperature": 2.5}, "Request.temperature"),
        ({"temperature": math.nan}, "Request.temperature"),
        ({"max_new_tokens": 0}, "Request.max_new_tokens"),
        ({"max_new_tokens": True}, "Request.max_new_tokens"),
        ({"request_id": "has space"}, "Request.request_id"),
        ({"request_id": "x" * 300}, "Request.request_id"),
    ],
)
def test_values_outside_the_bounds_are_still_refused_with_the_field_named(fields_: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        Request(prompt_ids=(1, 2), **fields_)  # type: ignore[arg-type]
