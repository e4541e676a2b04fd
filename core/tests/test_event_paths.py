"""Reading and editing events by path (signalsmith.event_paths): copy-on-write, problems named,
patterns over objects and lists."""

from __future__ import annotations

import pytest

from signalsmith import MISSING, EventEdit, EventPath, PathError, PathPattern
from signalsmith.testing import identify, track
from signalsmith.testing.transforms import events_of


def test_paths_name_fields_events_have() -> None:
    [event] = events_of([track(properties={"a": {"b": [10, {"c": "x"}]}, "dotted.key": 1})])
    assert EventPath("properties.a.b.1.c").read(event) == "x"
    assert EventPath("properties.dotted\\.key").read(event) == 1
    assert EventPath("event").read(event) == "Order Completed"
    assert EventPath("properties.a.z").read(event) is MISSING
    assert EventPath("properties.a.b.9").read(event) is MISSING
    assert EventPath("properties.a.z.q").why_missing(event) == "properties.a.z is missing"
    assert EventPath("properties.a.b.0.q").why_missing(event) == (
        "properties.a.b.0 is a number, not an object"
    )
    assert EventPath("traits.email").why_missing(event) == "track events have no traits"
    for bad, message in [
        ("propertys.a", "'propertys.a' names no field events have"),
        ("userId.x", "userId is not an object"),
        ("properties..a", "has an empty segment"),
    ]:
        with pytest.raises(PathError, match=message):
            EventPath(bad)
    with pytest.raises(PathError, match="set by SignalSmith"):
        EventPath("receivedAt", writable=True)
    with pytest.raises(PathError, match="name a field inside properties"):
        EventPath("properties", writable=True)


def test_edits_copy_only_what_they_change_and_never_the_original() -> None:
    [event] = events_of([track(properties={"a": {"b": 1}, "other": {"keep": 1}})])
    properties, other = event.properties, event.properties["other"]
    edit = EventEdit(event)
    assert not edit.changed
    assert edit.set(EventPath("properties.a.c.d", writable=True), "new") is None
    assert edit.set(EventPath("properties.a.e", writable=True), 2) is None
    assert edit.changed and edit.event is not event
    assert edit.event.properties == {"a": {"b": 1, "c": {"d": "new"}, "e": 2}, "other": {"keep": 1}}
    assert event.properties is properties and properties == {"a": {"b": 1}, "other": {"keep": 1}}
    assert edit.event.properties["other"] is other  # untouched objects are shared, not copied
    assert edit.pop(EventPath("properties.other.keep", writable=True)) == 1
    assert other == {"keep": 1}
    assert edit.pop(EventPath("properties.nothing", writable=True)) is MISSING


def test_an_edit_that_cannot_be_made_changes_nothing() -> None:
    [event] = events_of([track(properties={"a": "text"})])
    edit = EventEdit(event)
    assert edit.set(EventPath("properties.a.b.c", writable=True), 1) == (
        "properties.a is text, not an object"
    )
    assert not edit.changed
    assert edit.set(EventPath("event", writable=True), 5) == "event takes text, not a number"
    [person] = events_of([identify()])
    assert EventEdit(person).set(EventPath("properties.x", writable=True), 1) == (
        "identify events have no properties"
    )


def test_patterns_match_keys_and_list_elements() -> None:
    [event] = events_of(
        [track(properties={"a_debug": 1, "b": 2, "items": [{"x": 1}, {"y": 2}, {"x": 3}]})]
    )
    assert PathPattern("properties.*_debug").matches(event) == [("a_debug",)]
    assert PathPattern("properties.items.*.x").matches(event) == [
        ("items", 0, "x"),
        ("items", 2, "x"),
    ]
    edit = EventEdit(event)
    for keys in PathPattern("properties.items.*.x").matches(event):
        edit.pop_at("properties", keys)
    assert edit.event.properties["items"] == [{}, {"y": 2}, {}]
    assert event.properties["items"] == [{"x": 1}, {"y": 2}, {"x": 3}]
