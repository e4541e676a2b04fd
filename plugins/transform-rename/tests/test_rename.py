"""The rename transform: event names (exact and patterns), field paths and keys, per message
type, copy-on-write, reporting every rename and every path it could not rename."""

from __future__ import annotations

import pytest

from signalsmith.testing import identify, page, track
from signalsmith.testing.transforms import build_chains, events_of, run_chain, workspace_errors
from signalsmith_transform_rename import plugin

PLUGIN = (plugin, "transform-rename")


def chain(settings: str) -> list:
    text = f"""\
version: 1
sources:
  web: {{transforms: [r]}}
transforms:
  r:
    type: rename
    settings:
{settings}
"""
    return list(build_chains(text, PLUGIN)["web"])


async def test_event_names_exact_and_by_pattern_per_message_type() -> None:
    r = chain(
        """\
      events:
        - {from: Checkout Done, to: Order Completed}
        - {match: '^legacy[ _](?P<rest>.+)$', to: '\\g<rest>'}
        - {match: '^(.+) Screen$', to: '\\1', types: [screen, page]}
"""
    )
    messages = [
        track("Checkout Done"),
        track("legacy_Signed Up"),
        track("Untouched"),
        page("Pricing Screen"),
        track("Pricing Screen"),  # the third rule is for page and screen names only
    ]
    result = await run_chain(r, messages)
    assert [getattr(e, "event", None) or e.name for e in result.events] == [
        "Order Completed",
        "Signed Up",
        "Untouched",
        "Pricing",
        "Pricing Screen",
    ]
    details = {o.message_id: o.detail for o in result.outcomes}
    assert details[messages[0]["messageId"]] == "renamed event 'Checkout Done' -> 'Order Completed'"
    assert details[messages[3]["messageId"]] == "renamed name 'Pricing Screen' -> 'Pricing'"
    assert messages[2]["messageId"] not in details
    assert {o.reason for o in result.outcomes} == {"r"}
    assert {o.status for o in result.outcomes} == {"transformed"}


async def test_fields_move_nested_paths_and_the_original_event_is_not_changed() -> None:
    r = chain(
        """\
      fields:
        - {from: properties.total, to: properties.revenue}
        - {from: properties.shipping.zip, to: properties.address.postal_code}
        - {from: traits.e_mail, to: traits.email, types: [identify]}
        - {from: context.traits.e_mail, to: context.traits.email}
"""
    )
    events = events_of(
        [
            track(properties={"total": 9.5, "shipping": {"zip": "10115", "city": "Berlin"}}),
            identify(traits={"e_mail": "ünïcødé@example.com"}),
        ]
    )
    original_properties = events[0].properties
    result = await run_chain(r, events)
    moved, identified = result.events
    assert moved.properties == {
        "revenue": 9.5,
        "shipping": {"city": "Berlin"},
        "address": {"postal_code": "10115"},
    }
    assert identified.traits == {"email": "ünïcødé@example.com"}
    # Copy-on-write: the events the stage was handed are as they were.
    assert events[0].properties is original_properties
    assert original_properties == {"total": 9.5, "shipping": {"zip": "10115", "city": "Berlin"}}
    assert moved is not events[0]


async def test_missing_and_wrongly_typed_paths_leave_the_event_and_say_so() -> None:
    r = chain(
        """\
      fields:
        - {from: properties.total, to: properties.revenue, events: ["Order *"]}
        - {from: properties.shipping.zip, to: properties.zip}
        - {from: properties.sku, to: properties.item.sku}
"""
    )
    missing = track("Order Completed", properties={})
    wrong = track("Order Completed", properties={"shipping": "by sea", "sku": "s1", "item": 3})
    result = await run_chain(r, [missing, wrong])
    assert [e.properties for e in result.events] == [
        {},
        {"shipping": "by sea", "sku": "s1", "item": 3},
    ]
    skipped = {o.message_id: o.detail for o in result.outcomes if o.status == "skipped"}
    assert (
        "properties.total not renamed: properties.total is missing" in skipped[missing["messageId"]]
    )
    assert (
        "properties.shipping.zip not renamed: properties.shipping is text, not an object"
        in skipped[wrong["messageId"]]
    )
    assert (
        "properties.sku not renamed: properties.item is a number, not an object"
        in skipped[wrong["messageId"]]
    )
    assert not [o for o in result.outcomes if o.status == "transformed"]


async def test_keys_matching_a_pattern_are_renamed_within_an_object() -> None:
    r = chain(
        """\
      keys:
        - {in: properties, match: 'utm_(.+)', to: 'campaign_\\1'}
        - {in: context.traits, match: '[A-Z].*', to: 'upper_\\g<0>'}
"""
    )
    message = track(
        properties={"utm_source": "news", "utm_medium": "mail", "price": 3},
        context={"traits": {"Name": "Zoë", "plan": "pro"}},
    )
    [event] = (await run_chain(r, [message])).events
    assert event.properties == {"campaign_source": "news", "campaign_medium": "mail", "price": 3}
    assert event.context["traits"] == {"upper_Name": "Zoë", "plan": "pro"}


async def test_a_batch_without_matches_is_returned_as_none() -> None:
    [r] = chain("      events: [{from: A, to: B}]\n")
    assert r.apply(None, events_of([track("C"), identify()])) is None


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "      events: [{match: '([a-z', to: x}]\n",
            "transforms.r.settings.events[0].match: the pattern '([a-z' does not compile",
        ),
        (
            "      events: [{match: '(a)', to: '\\2'}]\n",
            "transforms.r.settings.events[0].to: '\\\\2' refers to group 2",
        ),
        (
            "      events: [{to: x}]\n",
            "transforms.r.settings.events[0]: an event rename takes `from`",
        ),
        (
            "      fields: [{from: propertys.a, to: properties.b}]\n",
            "transforms.r.settings.fields[0].from: 'propertys.a' names no field",
        ),
        (
            "      fields: [{from: properties.a, to: messageId}]\n",
            "transforms.r.settings.fields[0].to: 'messageId': messageId is set by SignalSmith",
        ),
        (
            "      keys: [{in: userId, match: a, to: b}]\n",
            "transforms.r.settings.keys[0].in: 'userId' is not an object",
        ),
        ("      fields: []\n", "transforms.r.settings: a rename needs at least one rule"),
    ],
)
def test_bad_rules_are_refused_with_the_path_of_the_setting(settings: str, expected: str) -> None:
    text = f"""\
version: 1
sources: {{web: {{transforms: [r]}}}}
transforms:
  r:
    type: rename
    settings:
{settings}"""
    [error] = workspace_errors(text, PLUGIN)
    assert error.startswith(expected), error
    assert "(line " in error
