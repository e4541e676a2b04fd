"""Segment's consent rules at real local destinations: every event through the real collector
(the consent stage), the Redis stream and the worker's routing, to webhook destinations served
by local HTTP servers, each needing its own categories."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from signalsmith import Outcome, Settings, hookimpl
from signalsmith.testing import (
    Receiver,
    forwarding,
    identify,
    page,
    plugin_infos,
    plugin_manager,
    receivers,
    track,
)
from signalsmith.testing.transforms import workspace_errors
from signalsmith_consent import plugin as consent
from signalsmith_consent.memory import ConsentMemory
from signalsmith_consent.testing import consent_document as document
from signalsmith_dest_webhook import plugin as webhook

CONSENT = (consent, "consent")
WEBHOOK = (webhook, "dest-webhook")

# Three destinations: one needing nothing, one needing analytics, one needing two categories.
NEEDS = {"open": [], "stats": ["analytics"], "ads": ["marketing", "advertising"]}


class Observer:
    """Keeps every outcome observers are told of."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    @hookimpl
    def observe_outcomes(self, outcomes: list[Outcome]) -> None:
        self.outcomes += outcomes


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def consenting(message: dict[str, Any], preferences: dict[str, bool] | None) -> dict[str, Any]:
    context = dict(message.get("context") or {})
    context["consent"] = {} if preferences is None else {"categoryPreferences": preferences}
    return {**message, "context": context}


def reached(found: dict[str, Receiver]) -> dict[str, set[str]]:
    return {name: {event["messageId"] for event in r.payloads()} for name, r in found.items()}


async def test_each_destination_gets_only_what_its_categories_allow(settings: Settings) -> None:
    observer = Observer()
    no_consent = track("Viewed", userId=user())
    empty_consent_object = consenting(track("Viewed", userId=user()), None)
    analytics_only = consenting(track("Viewed", userId=user()), {"analytics": True})
    one_of_two = consenting(
        page("Home", userId=user()), {"marketing": True, "advertising": False, "analytics": True}
    )
    nothing_granted = consenting(identify(userId=user()), {})
    unknown_category = consenting(track("Viewed", userId=user()), {"Astrology": True})
    everything = consenting(
        track("Bought", userId=user()),
        {"analytics": True, "marketing": True, "advertising": True},
    )
    sent = [
        no_consent,
        empty_consent_object,
        analytics_only,
        one_of_two,
        nothing_granted,
        unknown_category,
        everything,
    ]
    with receivers(*NEEDS) as found:
        text = document({name: r.url for name, r in found.items()}, NEEDS)
        async with forwarding(
            settings, CONSENT, WEBHOOK, (observer, "observer"), document=text
        ) as run:
            answer = await run.send(*sent)
            assert answer["accepted"] == len(sent) and answer["dropped"] == []
            await run.wait_settled(*NEEDS)
    ids = {
        name: message["messageId"]
        for name, message in zip(
            ["none", "empty", "analytics", "one_of_two", "nothing", "unknown", "all"],
            sent,
            strict=True,
        )
    }
    got = reached(found)
    # A sink needing no category receives everything.
    assert got["open"] == set(ids.values())
    # No consent object (or one without preferences): no enforcement.
    assert {ids["none"], ids["empty"]} <= got["stats"] and {ids["none"], ids["empty"]} <= got["ads"]
    # An empty preferences object grants nothing; an unknown category grants nothing declared.
    assert ids["nothing"] not in got["stats"] | got["ads"]
    assert ids["unknown"] not in got["stats"] | got["ads"]
    assert got["stats"] == {
        ids["none"],
        ids["empty"],
        ids["analytics"],
        ids["one_of_two"],
        ids["all"],
    }
    # A sink needing several categories needs all of them.
    assert got["ads"] == {ids["none"], ids["empty"], ids["all"]}

    # Every sink an event will not reach is an outcome at collection, naming what is missing.
    at_collection = {
        (o.message_id, o.sink): o.detail
        for o in observer.outcomes
        if o.stage == "consent" and o.status == "skipped"
    }
    assert at_collection[(ids["one_of_two"], "ads")] == "consent: advertising not granted"
    assert at_collection[(ids["nothing"], "ads")] == "consent: marketing, advertising not granted"
    assert at_collection[(ids["analytics"], "ads")] == "consent: marketing, advertising not granted"
    assert (ids["all"], "ads") not in at_collection and (ids["none"], "ads") not in at_collection
    # And the worker says the same when it skips them.
    skipped = {
        (o.message_id, o.sink): o.reason
        for o in observer.outcomes
        if o.stage == "deliver" and o.status == "skipped"
    }
    assert skipped[(ids["one_of_two"], "ads")] == "consent: advertising not granted"


async def test_an_event_no_sink_may_receive_is_dropped_at_collection_and_counted(
    settings: Settings,
) -> None:
    needs = {"stats": ["analytics"], "ads": ["marketing"]}
    withheld = consenting(track("Viewed", userId=user()), {"analytics": False})
    allowed = consenting(track("Viewed", userId=user()), {"analytics": True})
    with receivers(*needs) as found:
        text = document({name: r.url for name, r in found.items()}, needs)
        async with forwarding(settings, CONSENT, WEBHOOK, document=text) as run:
            answer = await run.send(withheld, allowed)
            await run.wait_settled(*needs)
            memory = ConsentMemory(run.runtime.redis, settings.key_prefix, 60)
            counts = await memory.dropped_counts()
    assert answer["accepted"] == 1
    [drop] = answer["dropped"]
    assert drop["messageId"] == withheld["messageId"] and drop["index"] == 0
    assert drop["stage"] == "consent" and drop["reason"] == "no_consent"
    assert drop["detail"] == "no sink may receive it: stats needs analytics; ads needs marketing"
    assert counts == {"web": 1}
    # Never buffered: no destination saw it.
    assert reached(found) == {"stats": {allowed["messageId"]}, "ads": set()}


async def test_a_preference_update_without_preferences_is_rejected_and_its_neighbours_kept(
    settings: Settings,
) -> None:
    with receivers("open") as found:
        text = document({"open": found["open"].url}, {"open": []})
        async with forwarding(settings, CONSENT, WEBHOOK, document=text) as run:
            before = track("Viewed", userId=user())
            bare = track("Segment Consent Preference Updated", userId=user())
            after = track("Viewed", userId=user())
            answer = await run.send(before, bare, after)
            await run.wait_settled("open")
    assert answer["accepted"] == 2
    [drop] = answer["dropped"]
    assert drop["index"] == 1 and drop["reason"] == "consent_preferences_required"
    assert "context.consent.categoryPreferences" in drop["detail"]
    assert reached(found)["open"] == {before["messageId"], after["messageId"]}


@pytest.mark.parametrize("where", ["source field", "consent.strict_sources"])
async def test_a_strict_source_without_consent_reaches_only_sinks_needing_none(
    settings: Settings, where: str
) -> None:
    needs = {"open": [], "stats": ["analytics"]}
    with receivers(*needs) as found:
        urls = {name: r.url for name, r in found.items()}
        if where == "source field":
            text = document(urls, needs, strict=True)
        else:
            section = "consent:\n  categories: [analytics]\n  strict_sources: [kiosk]"
            text = document(urls, needs, consent_section=section)
        async with forwarding(
            settings, CONSENT, WEBHOOK, document=text, sources=("web", "kiosk")
        ) as run:
            lax = track("Viewed", userId=user())
            strict = track("Viewed", userId=user())
            await run.send(lax, source="web")
            await run.send(strict, source="kiosk")
            await run.wait_settled(*needs)
    got = reached(found)
    assert got["open"] == {lax["messageId"], strict["messageId"]}
    assert got["stats"] == {lax["messageId"]}
    # The strict source's event is stamped with what it was judged by: nothing granted.
    [stamped] = [e for e in found["open"].payloads() if e["messageId"] == strict["messageId"]]
    assert stamped["context"]["consent"] == {"categoryPreferences": {}}


def test_an_undeclared_category_is_refused_at_its_path() -> None:
    text = document(
        {"stats": "https://stats.example.com", "ads": "https://ads.example.com"},
        {"stats": ["Analytics"], "ads": ["marketing", "astrology"]},
        consent_section="consent:\n  categories: [analytics, marketing]\n  sinks: {clickhouse: [tracking]}\n  strict_sources: [nowhere]",
    )
    errors = workspace_errors(text, CONSENT, WEBHOOK)
    assert any(
        "destinations.stats.routing.consent[0]" in e
        and "'Analytics' is not declared" in e
        and "did you mean 'analytics'" in e
        for e in errors
    ), errors
    assert any("destinations.ads.routing.consent[1]" in e and "'astrology'" in e for e in errors)
    assert any("consent.sinks.clickhouse[0]" in e and "'tracking'" in e for e in errors)
    assert any("consent.strict_sources[0]" in e and "'nowhere'" in e for e in errors)
    # Without a `consent:` section nothing is declared, so nothing is checked.
    plain = document(
        {"stats": "https://stats.example.com"}, {"stats": ["Analytics"]}, consent_section=""
    )
    assert workspace_errors(plain, CONSENT, WEBHOOK) == []


def test_plugin_is_registered_through_its_entry_point() -> None:
    [info] = plugin_infos(plugin_manager(entry_points=["consent"]))
    assert info.name == "consent"
    assert info.hooks == [
        "apply_consent",
        "register_admin_routes",
        "register_commands",
        "register_workspace_sections",
        "shutdown",
        "startup",
    ]
