"""Reading client JSON: nesting measured without recursion, and what is repaired or refused."""

from __future__ import annotations

import json

import msgspec
import pytest

from signalsmith.json_input import (
    MAX_NESTING_DEPTH,
    JsonProblem,
    cut_deep_values,
    decode_json,
    nesting_depth,
    repaired_json,
)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}], "c": {}}', 4),
        # Brackets inside strings, escaped quotes included, are text.
        (b'{"a": "[[[{{{", "b\\"[[": ["]]]\\\\"]}', 2),
        (b"[" * 100_000 + b"]" * 100_000, 100_000),
    ],
)
def test_nesting_depth(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_cut_deep_values_keeps_what_is_shallower() -> None:
    text = json.dumps({"a": {"b": {"c": [1]}, "s": "{[{["}, "d": [[2]], "e": 3}).encode()
    assert json.loads(cut_deep_values(text, 3)) == {
        "a": {"b": [], "s": "{[{["},
        "d": [[]],
        "e": 3,
    }
    assert cut_deep_values(text, 10) == text


@pytest.mark.parametrize("text", [b"{not json", b"", b'{"a": 1', b'{"a": 01}', b"[1,]"])
def test_ordinary_invalid_json_is_not_repaired(text: bytes) -> None:
    assert repaired_json(text) is None
    with pytest.raises(msgspec.DecodeError):
        decode_json(text)


def test_a_string_that_spells_nan_is_kept() -> None:
    text = b'{"NaN": "NaN", "x": NaN, "Infinity": ["-Infinity", -Infinity]}'
    assert decode_json(text) == {"NaN": "NaN", "x": None, "Infinity": ["-Infinity", None]}


def test_a_batch_context_may_nest_one_level_less_than_a_message() -> None:
    text = b'{"a":' * (MAX_NESTING_DEPTH - 1) + b"1" + b"}" * (MAX_NESTING_DEPTH - 1)
    assert decode_json(text, max_depth=MAX_NESTING_DEPTH - 1)
    with pytest.raises(JsonProblem) as problem:
        decode_json(b"[" + text + b"]", max_depth=MAX_NESTING_DEPTH - 1)
    assert problem.value.code == "nesting_too_deep"
