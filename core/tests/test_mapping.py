"""Mappings: every mapping-kit directive on Segment-shaped events, undefined values left out,
every problem of a bad mapping named with its path, and a destination instance's mappings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from signalsmith.mapping import (
    UNDEFINED,
    MappingInvalid,
    build_event_mapping,
    check_default_mappings,
    compile_mapping,
    parse_path,
)
from signalsmith.model import Identify, Track

PAYLOAD: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "abc123",
    "traits": {"name": "Mr. Rogers", "email": "Fred@Example.COM"},
    "context": {"ip": "10.0.0.1", "page": {"url": "https://shop.example/cart"}},
    "properties": {
        "order_id": "o-1",
        "revenue": 25.5,
        "count": 3,
        "empty": "",
        "nothing": None,
        "products": [{"sku": "a-1", "price": 10}, {"sku": "b-2", "price": 15.5}],
        "code": "AB-CD-EF",
        "nested": {"a": {"b": 1, "c": [1, 2]}, "d": "x"},
        "blob": '{"x": [1, 2]}',
    },
}


def resolve(mapping: Any, payload: dict[str, Any] = PAYLOAD) -> Any:
    return compile_mapping(mapping)(payload)


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        # raw values are kept as written; undefined members are left out, null is kept
        (
            {"a": 1, "b": [True, None], "c": {"d": "e"}},
            {"a": 1, "b": [True, None], "c": {"d": "e"}},
        ),
        ({"x": {"@path": "$.properties.missing"}, "y": None}, {"y": None}),
        ([{"@path": "$.nope"}, {"@path": "$.userId"}], ["abc123"]),
        # @path: $. optional, indexes, quoted keys, the whole event
        ({"@path": "$.properties.products[1].sku"}, "b-2"),
        ({"@path": "properties.products.0.price"}, 10),
        ({"@path": "$.context['page'].url"}, "https://shop.example/cart"),
        ({"@path": "$.properties.nothing"}, None),
        ({"@path": "$."}, PAYLOAD),
        # @template: missing and null render empty, numbers as JavaScript writes them
        ({"@template": "{{traits.name}} ({{userId}})"}, "Mr. Rogers (abc123)"),
        ({"@template": "[{{ nope }}|{{properties.nothing}}|{{properties.revenue}}]"}, "[||25.5]"),
        (
            {"@template": "{{properties.products}}"},
            '[{"sku":"a-1","price":10},{"sku":"b-2","price":15.5}]',
        ),
        # @literal is never interpreted
        ({"@literal": {"@path": "$.userId"}}, {"@path": "$.userId"}),
        ({"@literal": "{{userId}}"}, "{{userId}}"),
        # @if: exists / blank, a missing branch leaves the key out
        ({"@if": {"exists": {"@path": "$.userId"}, "then": "yes", "else": "no"}}, "yes"),
        ({"@if": {"exists": {"@path": "$.properties.nothing"}, "then": "yes", "else": "no"}}, "no"),
        ({"@if": {"blank": {"@path": "$.properties.empty"}, "then": "yes", "else": "no"}}, "no"),
        ({"@if": {"exists": {"@path": "$.properties.empty"}, "then": "yes", "else": "no"}}, "yes"),
        ({"k": {"@if": {"exists": {"@path": "$.nope"}, "then": 1}}}, {}),
        # @arrayPath: element-relative paths; one object counts as a list of one
        (
            {"@arrayPath": ["$.properties.products", {"id": {"@path": "$.sku"}, "q": 1}]},
            [{"id": "a-1", "q": 1}, {"id": "b-2", "q": 1}],
        ),
        ({"@arrayPath": ["$.traits", {"n": {"@path": "$.name"}}]}, [{"n": "Mr. Rogers"}]),
        ({"@arrayPath": ["$.properties.products"]}, PAYLOAD["properties"]["products"]),
        # @case, @replace (literal patterns; numbers are stringified first)
        (
            {"@case": {"operator": "lower", "value": {"@path": "$.traits.email"}}},
            "fred@example.com",
        ),
        ({"@case": {"operator": "upper", "value": {"@path": "$.properties.count"}}}, 3),
        ({"@replace": {"value": {"@path": "$.properties.code"}, "pattern": "-"}}, "ABCDEF"),
        (
            {
                "@replace": {
                    "value": {"@path": "$.properties.code"},
                    "pattern": "-",
                    "replacement": ".",
                    "global": False,
                }
            },
            "AB.CD-EF",
        ),
        (
            {
                "@replace": {
                    "value": "a.b",
                    "pattern": ".",
                    "replacement": "*",
                    "pattern2": "a",
                    "replacement2": "z",
                }
            },
            "z*b",
        ),
        (
            {
                "@replace": {
                    "value": {"@path": "$.properties.count"},
                    "pattern": "3",
                    "replacement": "x",
                }
            },
            "x",
        ),
        (
            {"@replace": {"value": "AbA", "pattern": "a", "replacement": "_", "ignorecase": True}},
            "_b_",
        ),
        # @merge: later objects win to the right, earlier to the left; non-objects are skipped
        (
            {
                "@merge": {
                    "objects": [{"name": "n/a", "x": 1}, {"@path": "$.traits"}],
                    "direction": "right",
                }
            },
            {"name": "Mr. Rogers", "x": 1, "email": "Fred@Example.COM"},
        ),
        (
            {
                "@merge": {
                    "objects": [{"name": "n/a"}, {"@path": "$.traits"}, {"@path": "$.nope"}],
                    "direction": "left",
                }
            },
            {"name": "n/a", "email": "Fred@Example.COM"},
        ),
        # @transform: a mapping applied to what another produced
        (
            {
                "@transform": {
                    "apply": {"foo": {"@path": "$.properties.count"}},
                    "mapping": {"v": {"@path": "$.foo"}},
                }
            },
            {"v": 3},
        ),
        # @flatten
        (
            {"@flatten": {"value": {"@path": "$.properties.nested"}}},
            {"a.b": 1, "a.c.0": 1, "a.c.1": 2, "d": "x"},
        ),
        (
            {
                "@flatten": {
                    "value": {"@path": "$.properties.nested"},
                    "separator": "_",
                    "omitArrays": True,
                }
            },
            {"a_b": 1, "a_c": [1, 2], "d": "x"},
        ),
        # @json: encode, decode, a bad decode gives the input back
        ({"@json": {"mode": "decode", "value": {"@path": "$.properties.blob"}}}, {"x": [1, 2]}),
        (
            {"@json": {"mode": "encode", "value": {"@path": "$.traits"}}},
            '{"name":"Mr. Rogers","email":"Fred@Example.COM"}',
        ),
        ({"@json": {"mode": "decode", "value": "not json"}}, "not json"),
        # @excludeWhenNull
        (
            {
                "a": {"@excludeWhenNull": {"@path": "$.properties.nothing"}},
                "b": {"@excludeWhenNull": 0},
            },
            {"b": 0},
        ),
        # @liquid: output tags with filters
        (
            {"@liquid": "{{ traits.name | upcase }}: {{ properties.count | plus: 2 }}"},
            "MR. ROGERS: 5",
        ),
        (
            {
                "@liquid": "{{ properties.nothing | default: 'none' }}/{{ properties.products | size }}"
            },
            "none/2",
        ),
        # a directive's argument may come from another directive
        ({"@path": {"@template": "properties.{{properties.order_id}}"}}, UNDEFINED),
        ({"@path": {"@template": "traits.{{ properties.empty }}name"}}, "Mr. Rogers"),
    ],
)
def test_each_directive_resolves_as_mapping_kit_does(mapping: Any, expected: Any) -> None:
    assert resolve(mapping) == expected


def test_a_missing_field_drops_the_key_or_takes_the_default_and_never_raises() -> None:
    mapping = {
        "email": {"@path": "$.traits.email"},
        "currency": {
            "@if": {
                "exists": {"@path": "$.properties.currency"},
                "then": {"@path": "$.properties.currency"},
                "else": "USD",
            }
        },
        "first_sku": {"@path": "$.properties.products[0].sku"},
        "lower": {"@case": {"operator": "lower", "value": {"@path": "$.properties.nope"}}},
        "flat": {"@flatten": {"value": {"@path": "$.nope"}}},
        "items": {"@arrayPath": ["$.properties.products", {"sku": {"@path": "$.sku"}}]},
        "merged": {"@merge": {"objects": [{"@path": "$.nope"}, {"@path": "$.nope2"}]}},
    }
    compiled = compile_mapping(mapping)
    # Every field is there for a full event...
    assert compiled(PAYLOAD)["currency"] == "USD"
    # ... and an event with nothing the mapping reads still maps, to what it has.
    assert compiled({"type": "track"}) == {"currency": "USD", "merged": {}}
    assert compiled({"type": "track", "properties": "not an object", "traits": [1, 2]}) == {
        "currency": "USD",
        "merged": {},
    }


@pytest.mark.parametrize(
    ("mapping", "problems"),
    [
        ({"@pth": "$.a"}, [("", "unknown directive @pth")]),
        ({"a": {"@path": "$.x", "b": 1}}, [("a", "cannot have other keys (b)")]),
        ({"a": {"@path": "$.x", "@template": "y"}}, [("a", "one directive, found 2")]),
        ({"a": {"@path": 1}}, [("a.@path", "takes a string, got a number")]),
        ({"a": {"@path": "x..y"}}, [("a.@path", "empty segment")]),
        ({"a": [{"@case": {"operator": "title", "value": 1}}]}, [("a[0].@case.operator", "lower")]),
        ({"@if": {"then": 1}}, [("@if", 'one condition: "exists"')]),
        ({"@if": {"exists": 1}}, [("@if", 'a "then" or an "else"')]),
        (
            {"@replace": {"value": 1, "pattern": "abcdefghijk"}},
            [("@replace.pattern", "at most 10")],
        ),
        ({"@replace": {"value": 1}}, [("@replace", "needs 'pattern'")]),
        ({"@merge": {"objects": [], "direction": "up"}}, [("@merge.objects", "list of objects")]),
        ({"@json": {"mode": "zip", "value": 1}}, [("@json.mode", '"encode" or "decode"')]),
        ({"@arrayPath": ["$.a", "shape"]}, [("@arrayPath[1]", "item shape is an object")]),
        ({"@liquid": "{% for x in y %}{% endfor %}"}, [("@liquid", "only output tags")]),
        ({"@liquid": "{{ a | shout }}"}, [("@liquid", "unknown filter 'shout'")]),
        (
            {"one": {"@nope": 1}, "two": {"@case": {"operator": "lower"}}},
            [("one", "unknown directive @nope"), ("two.@case", "needs 'value'")],
        ),
    ],
)
def test_every_problem_of_a_bad_mapping_is_named_with_its_path(
    mapping: Any, problems: list[tuple[str, str]]
) -> None:
    with pytest.raises(MappingInvalid) as raised:
        compile_mapping(mapping)
    found = raised.value.problems
    assert len(found) == len(problems), found
    for problem, (path, message) in zip(found, problems, strict=True):
        rendered = "".join(
            f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
            for i, p in enumerate(problem.path)
        )
        assert rendered == path
        assert message in problem.message


def test_paths_parse_like_mapping_kit_paths() -> None:
    assert parse_path("$.properties.products[0].sku") == ("properties", "products", 0, "sku")
    assert parse_path("properties.a b") == ("properties", "a b")
    assert parse_path("$.") == () == parse_path("$") == parse_path("")
    assert parse_path("context['page.url']") == ("context", "page.url")
    for bad in ("a..b", "a.", "a[0"):
        with pytest.raises(ValueError):
            parse_path(bad)


def _events() -> tuple[Track, Track, Identify]:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    order = Track(
        message_id="m-1",
        received_at=now,
        timestamp=now,
        event="Order Completed",
        user_id="u-1",
        properties={"order_id": "o-9", "revenue": 20},
    )
    viewed = Track(message_id="m-2", received_at=now, timestamp=now, event="Viewed", user_id="u-1")
    identify = Identify(
        message_id="m-3", received_at=now, timestamp=now, user_id="u-1", traits={"email": "a@b.c"}
    )
    return order, viewed, identify


def test_an_instance_overrides_its_types_defaults_and_the_first_matching_trigger_wins() -> None:
    order, viewed, identify = _events()
    defaults = {"track": {"name": {"@path": "$.event"}}, "identify": {"@path": "$.traits"}}
    mapping = build_event_mapping(
        defaults,
        {"identify": {"mail": {"@path": "$.traits.email"}}},
        [
            (
                "purchase",
                'type = "track" and event = "Order Completed"',
                {"order": {"@path": "$.properties.order_id"}},
            ),
            ("also a track", 'type = "track"', {"never": True}),
        ],
    )
    assert mapping.payload(order) == {"order": "o-9"}
    assert mapping.payload(viewed) == {"never": True}
    assert mapping.payload(identify) == {"mail": "a@b.c"}
    # A type with no mapping anywhere gets the whole event, as Segment spells it.
    plain = build_event_mapping({}, None, [])
    whole = plain.payload(order)
    assert whole["messageId"] == "m-1" and whole["type"] == "track"
    assert whole["properties"] == {"order_id": "o-9", "revenue": 20}
    assert whole["timestamp"].startswith("2026-12-01T12:00:00")


def test_instance_mapping_problems_carry_their_place_in_the_destination() -> None:
    with pytest.raises(MappingInvalid) as raised:
        build_event_mapping(
            {},
            {"track": {"a": {"@nope": 1}}},
            [("bad trigger", "type = ", {"x": 1}), ("bad mapping", "all", {"@case": 1})],
        )
    paths = [problem.path for problem in raised.value.problems]
    assert paths == [
        ("mapping", "track", "a"),
        ("mappings", 0, "trigger"),
        ("mappings", 1, "mapping", "@case"),
    ]


def test_a_types_defaults_are_checked() -> None:
    check_default_mappings({"track": {"@path": "$."}})
    with pytest.raises(MappingInvalid, match="not a message type"):
        check_default_mappings({"purchase": {}})
    with pytest.raises(MappingInvalid, match=r"page\.@template"):
        check_default_mappings({"page": {"@template": 5}})
