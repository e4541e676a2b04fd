"""FQL: Segment's filter language, parsed once and evaluated on events without eval."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signalsmith import Event, Identify, Page, Track
from signalsmith.fql import FqlError, parse

NOW = datetime(2026, 12, 2, 3, 4, 5, 678000, tzinfo=UTC)


def order(**properties: Any) -> Track:
    return Track(
        message_id="m-1",
        received_at=NOW,
        timestamp=NOW,
        user_id="u-1",
        event="Order Completed",
        properties=properties,
        context={
            "traits": {"email": "ada@example.com"},
            "page": {"url": "https://shop.example.com/checkout"},
            "library": {"name": "analytics.js"},
        },
        extra={"channel": "web"},
    )


TRACK = order(
    revenue=120.5,
    items=3,
    features=["dark-mode", "beta"],
    coupon=None,
    flag=True,
    nested={"a b": {"c": "deep"}},
    products=[{"sku": "x"}],
    code="7",
)
IDENTIFY = Identify(
    message_id="m-2", received_at=NOW, timestamp=NOW, anonymous_id="anon-1", traits={"plan": "pro"}
)
PAGE = Page(message_id="m-3", received_at=NOW, timestamp=NOW, user_id="u-1", name="Home")


@pytest.mark.parametrize(
    ("condition", "event", "expected"),
    [
        ('type = "track" and event = "Order Completed"', TRACK, True),
        ("type = 'identify'", TRACK, False),
        ("properties.revenue >= 100", TRACK, True),
        ("properties.revenue > 200 or properties.items = 3", TRACK, True),
        ("properties.items = 3.0", TRACK, True),
        # Strict equality: a number never equals a string.
        ("properties.code = 7", TRACK, False),
        ('properties.code = "7"', TRACK, True),
        ("number(properties.code) = 7", TRACK, True),
        # Comparisons are numbers only.
        ("properties.code > 1", TRACK, False),
        ('userId in ["u-1", "u-2"]', TRACK, True),
        ("'dark-mode' in properties.features", TRACK, True),
        ("'light' in properties.features", TRACK, False),
        ('contains(context.page.url, "checkout")', TRACK, True),
        ('!contains(context.page.url, "staging")', TRACK, True),
        ('match(context.traits.email, "*@example.com")', TRACK, True),
        ('match(context.traits.email, "*@EXAMPLE.com")', TRACK, False),
        ('match(event, "Order ?ompleted")', TRACK, True),
        ('match(event, "[NO]rder*")', TRACK, True),
        ('match(event, "Order")', TRACK, False),
        ('regex(context.traits.email, "^[a-z]+@")', TRACK, True),
        ("length(userId) > 0", TRACK, True),
        ("length(userId) > 0", IDENTIFY, False),
        ("length(properties.features) = 2", TRACK, True),
        ('length("é") = 2', TRACK, True),
        ('typeof(properties.features) = "list"', TRACK, True),
        ('typeof(properties.coupon) = "null"', TRACK, True),
        ('typeof(properties.flag) = "bool"', TRACK, True),
        ('typeof(properties.nested) = "object"', TRACK, True),
        ("properties.coupon = null", TRACK, True),
        ("properties.missing = null", TRACK, True),
        ("exists(properties.revenue) and !exists(properties.missing)", TRACK, True),
        ("properties.flag", TRACK, True),
        ("properties.revenue", TRACK, False),  # not a boolean: fails closed
        (r"properties.nested.a\ b.c = 'deep'", TRACK, True),
        ("properties.products.0.sku = 'x'", TRACK, True),
        ('lowercase(event) = "order completed"', TRACK, True),
        ('snakecase(event) = "order_completed"', TRACK, True),
        ('kebabcase("checkoutStarted") = "checkout-started"', TRACK, True),
        ('titlecase("order_completed") = "Order Completed"', TRACK, True),
        ("uppercase(properties.missing) = null", TRACK, True),
        ('string(properties.items) = "3"', TRACK, True),
        ('bool("true")', TRACK, True),
        ('traits.plan = "pro"', IDENTIFY, True),
        ('anonymousId = "anon-1" and userId = null', IDENTIFY, True),
        ('name = "Home"', PAGE, True),
        ('receivedAt = "2026-12-02T03:04:05.678000Z"', TRACK, True),
        ('channel = "web"', TRACK, True),  # a top-level key the client added
        ("!(type = 'track' and properties.items < 2)", TRACK, True),
        ("all", IDENTIFY, True),
    ],
)
def test_conditions(condition: str, event: Event, expected: bool) -> None:
    assert parse(condition)(event) is expected


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ('type = "track" and', "ends too early"),
        ("properties.a == 1", "expected a value at position 15"),
        ("nope(event)", "unknown function 'nope'"),
        ("contains(event)", "contains() takes 2 arguments, got 1"),
        ("match(event, properties.x)", "match()'s pattern must be a quoted string"),
        ('regex(event, "(")', "regex() pattern '(' does not compile"),
        ('event = "a" "b"', "unexpected '\"b\"' at position 13"),
        ("event = 'x' ~", "unexpected '~' at position 13"),
        ("(" * 100 + "true" + ")" * 100, "nests at most 64 levels"),
        ("!" * 100 + "true", "nests at most 64 levels"),
    ],
)
def test_a_condition_that_does_not_parse_says_where(condition: str, message: str) -> None:
    with pytest.raises(FqlError) as raised:
        parse(condition)
    assert message in str(raised.value)


def test_value_gives_the_expression_itself() -> None:
    assert parse("properties.revenue").value(TRACK) == 120.5
    assert parse("lowercase(event)").value(TRACK) == "order completed"


def test_conditions_read_plain_dicts_too() -> None:
    assert parse('properties.plan = "pro"')({"properties": {"plan": "pro"}})


FQL_ALPHABET = st.sampled_from(
    [
        "type", "event", "properties.a", "userId", " = ", " != ", " > ", " in ", " and ", " or ",
        "!", "(", ")", "[", "]", ",", '"x"', "'y'", "1", "-2.5", "null", "true", "contains(",
        "match(", "length(", "regex(", "typeof(", "\\", ".", " ", "*", "all",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(FQL_ALPHABET, max_size=25).map("".join)))
def test_no_text_crashes_the_parser_or_an_evaluation(source: str) -> None:
    try:
        condition = parse(source)
    except FqlError:
        return
    for event in (TRACK, IDENTIFY, PAGE):
        assert condition(event) in (True, False)


def test_a_condition_lists_the_fields_it_reads() -> None:
    condition = parse(
        'lowercase(context.traits.email) = "a" and properties.product\\ 1 in ["x"] or exists(userId)'
    )
    assert condition.paths == (
        ("context", "traits", "email"),
        ("properties", "product 1"),
        ("userId",),
    )
    assert parse("all").paths == ()
