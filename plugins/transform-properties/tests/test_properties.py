"""The properties transform: add (static and templates), remove (paths and globs), hash with a
secret salt, cap string lengths; scoping, reporting, and settings refused with their path."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from signalsmith.testing import identify, page, track
from signalsmith.testing.transforms import build_chains, events_of, run_chain, workspace_errors
from signalsmith_transform_properties import hash_value, plugin

PLUGIN = (plugin, "transform-properties")
SALT = "pepper-" + "5f1c"


def document(settings: str) -> str:
    return f"""\
version: 1
sources:
  web: {{transforms: [p]}}
transforms:
  p:
    type: properties
    settings:
{settings}
"""


def chain(settings: str) -> list:
    return list(build_chains(document(settings), PLUGIN, environ={"PII_SALT": SALT})["web"])


async def test_add_static_values_and_templates_that_keep_types() -> None:
    p = chain(
        """\
      add:
        properties.channel: web
        properties.flags: {beta: true}
        properties.path: "{{ context.page.path }}"
        properties.label: "{{ event }} on {{ context.page.path }} ({{ properties.items }} items)"
        properties.items_copy: "{{ properties.items }}"
        properties.email_lower: "{{ lowercase(context.traits.email) }}"
"""
    )
    message = track(
        "Order Completed",
        properties={"items": 3},
        context={"page": {"path": "/checkout"}, "traits": {"email": "ÄDA@Example.com"}},
    )
    result = await run_chain(p, [message])
    [event] = result.events
    assert event.properties == {
        "items": 3,
        "channel": "web",
        "flags": {"beta": True},
        "path": "/checkout",
        "label": "Order Completed on /checkout (3 items)",
        "items_copy": 3,
        "email_lower": "äda@example.com",
    }
    [outcome] = result.outcomes
    assert outcome.status == "transformed" and outcome.reason == "p"
    assert "set properties.label" in (outcome.detail or "")


async def test_a_template_whose_field_is_missing_adds_nothing_and_says_why() -> None:
    p = chain('      add: {properties.path: "{{ context.page.path }}", properties.x: 1}\n')
    result = await run_chain(p, [track(context={"page": "not an object"}), track(context={})])
    assert [e.properties for e in result.events] == [
        {"revenue": 19.99, "x": 1},
        {"revenue": 19.99, "x": 1},
    ]
    skipped = [o.detail for o in result.outcomes if o.status == "skipped"]
    assert skipped == [
        "properties.path not added: context.page is text, not an object",
        "properties.path not added: context.page is missing",
    ]


async def test_overwrite_false_keeps_what_the_event_has() -> None:
    p = chain("      add: {properties.channel: web}\n      overwrite: false\n")
    result = await run_chain(p, [track(properties={"channel": "app"}), track(properties={})])
    assert [e.properties for e in result.events] == [{"channel": "app"}, {"channel": "web"}]


async def test_remove_paths_and_globs_including_list_elements() -> None:
    p = chain(
        """\
      remove: [context.ip, "properties.*_debug", "properties.items.*.internal", traits.password]
"""
    )
    message = track(
        properties={
            "a_debug": 1,
            "b_debug": 2,
            "keep": 3,
            "items": [{"sku": "s1", "internal": "x"}, {"sku": "s2"}],
        },
        context={"ip": "203.0.113.9", "locale": "de-DE"},
    )
    result = await run_chain(p, [message, identify(traits={"password": "hunter2", "plan": "pro"})])
    tracked, identified = result.events
    assert tracked.properties == {"keep": 3, "items": [{"sku": "s1"}, {"sku": "s2"}]}
    assert "ip" not in tracked.context and tracked.context["locale"] == "de-DE"
    assert identified.traits == {"plan": "pro"}
    details = [o.detail for o in result.outcomes]
    assert "removed properties.items.0.internal" in details[0]


async def test_hash_with_the_salt_from_the_environment_and_wrong_types_reported() -> None:
    p = chain(
        """\
      hash: {fields: [traits.email, "context.traits.*", properties.phone], salt: "${PII_SALT}"}
"""
    )
    result = await run_chain(
        p,
        [
            identify(traits={"email": "zoë@example.com"}, context={"traits": {"email": "x@y.z"}}),
            track(properties={"phone": {"mobile": "123"}}),
            page(),  # none of the fields: nothing to hash, nothing to say
        ],
    )
    identified, tracked, _ = result.events
    expected = hmac.new(SALT.encode(), "zoë@example.com".encode(), hashlib.sha256).hexdigest()
    assert identified.traits["email"] == expected == hash_value("zoë@example.com", SALT.encode())
    assert identified.context["traits"]["email"] == hash_value("x@y.z", SALT.encode())
    assert tracked.properties == {"phone": {"mobile": "123"}}
    [skipped] = [o for o in result.outcomes if o.status == "skipped"]
    assert skipped.detail == "properties.phone not hashed: it is an object"
    assert len(result.outcomes) == 2


async def test_cap_cuts_strings_by_characters_at_any_depth() -> None:
    p = chain("      cap: {max_length: 5}\n")
    message = track(
        properties={"title": "Crème brûlée", "nested": [{"note": "😀😀😀😀😀😀"}], "n": 123456789},
    )
    [event] = (await run_chain(p, [message])).events
    assert event.properties == {
        "title": "Crème",
        "nested": [{"note": "😀😀😀😀😀"}],
        "n": 123456789,
    }


async def test_types_and_events_scope_the_instance() -> None:
    p = chain(
        "      add: {properties.flagged: true}\n      types: [track]\n      events: ['Order *']\n"
    )
    result = await run_chain(p, [track("Order Completed"), track("Signed Up"), page()])
    assert [e.properties.get("flagged") for e in result.events] == [True, None, None]


def test_an_event_left_unchanged_costs_no_copy() -> None:
    [p] = chain("      remove: [properties.secret]\n")
    events = events_of([track(), page()])
    assert p.apply(None, events) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            '      add: {properties.x: "{{ propertys.total }}"}\n',
            "transforms.p.settings.add.properties.x: {{ propertys.total }} names an unknown field: 'propertys.total' names no field",
        ),
        (
            '      add: {properties.x: "{{ lowercase( }}"}\n',
            "transforms.p.settings.add.properties.x: {{ lowercase( }} does not parse",
        ),
        (
            "      add: {type: track}\n",
            "transforms.p.settings.add.type: 'type': type is set by SignalSmith",
        ),
        ("      remove: ['nope.*']\n", "transforms.p.settings.remove[0]: 'nope.*' names no field"),
        (
            "      hash: {fields: [traits.email], salt: inline-salt}\n",
            "transforms.p.settings.hash.salt: a secret must be written as a ${ENV_NAME} placeholder",
        ),
        (
            "      cap: {max_length: 0}\n",
            "transforms.p.settings.cap.max_length: expected `int` >= 1",
        ),
        ("      overwrite: true\n", "transforms.p.settings: a properties transform needs"),
    ],
)
def test_bad_settings_are_refused_with_their_path(settings: str, expected: str) -> None:
    [error] = workspace_errors(document(settings), PLUGIN)
    assert error.startswith(expected), error
