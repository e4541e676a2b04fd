"""The filter transform: FQL drop/keep conditions and stable sampling, through a workspace
document checked and built as a collector builds it."""

from __future__ import annotations

import hashlib

import pytest

from signalsmith.testing import identify, page, track
from signalsmith.testing.transforms import build_chains, events_of, run_chain, workspace_errors
from signalsmith_transform_filter import plugin, sample_point

PLUGIN = (plugin, "transform-filter")


def document(settings: str, name: str = "f") -> str:
    return f"""\
version: 1
sources:
  web: {{transforms: [{name}]}}
transforms:
  {name}:
    type: filter
    settings: {settings}
"""


async def test_drop_removes_matching_events_and_names_the_instance_and_condition() -> None:
    [bots] = build_chains(
        document("""{drop: 'regex(context.userAgent, "(?i)bot|crawler")'}""", "bots"), PLUGIN
    )["web"]
    human = track(context={"userAgent": "Mozilla/5.0 Firefox/120"})
    bot = track(context={"userAgent": "Googlebot/2.1"})
    no_agent = track()
    result = await run_chain([bots], [human, bot, no_agent])
    assert [e.message_id for e in result.events] == [human["messageId"], no_agent["messageId"]]
    [(instance, drop)] = result.dropped
    assert instance == "bots" and drop.reason == "bots"
    assert drop.event.message_id == bot["messageId"]
    assert drop.detail.startswith("dropped by filter 'bots': drop condition holds: regex(")


async def test_keep_drops_what_does_not_match_and_types_must_match() -> None:
    [orders] = build_chains(
        document("""{keep: 'type = "track" and properties.total >= 10'}"""), PLUGIN
    )["web"]
    big = track(properties={"total": 12})
    text_total = track(properties={"total": "12"})  # FQL's = and >= are strict
    small = track(properties={"total": 3})
    other = identify()
    result = await run_chain([orders], [big, text_total, small, other])
    assert [e.message_id for e in result.events] == [big["messageId"]]
    assert {d.event.message_id for _, d in result.dropped} == {
        text_total["messageId"],
        small["messageId"],
        other["messageId"],
    }
    assert all("keep condition does not hold" in d.detail for _, d in result.dropped)


async def test_a_batch_with_nothing_to_drop_is_handed_on_as_it_is() -> None:
    [f] = build_chains(document("{drop: 'event = \"Nope\"'}"), PLUGIN)["web"]
    events = events_of([track(), page()])
    assert f.apply(None, events) is None  # type: ignore[arg-type]


async def test_in_exists_and_not_work_on_missing_and_unicode_fields() -> None:
    [f] = build_chains(
        document(
            """{drop: '!exists(userId) or context.locale in ["zh-CN", "ja-JP"] or event = "Café ☕"'}"""
        ),
        PLUGIN,
    )["web"]
    anonymous = track(userId=None, anonymousId="a1")
    anonymous.pop("userId")
    chinese = track(context={"locale": "zh-CN"})
    coffee = track("Café ☕")
    plain = track("Cafe")
    result = await run_chain([f], [anonymous, chinese, coffee, plain])
    assert [e.message_id for e in result.events] == [plain["messageId"]]


def test_the_sample_point_is_stable_uniform_and_documented() -> None:
    key = "user-42"
    digest = hashlib.sha256(b"seed\x00user-42").digest()
    assert sample_point(key, "seed") == int.from_bytes(digest[:8], "big") / 2**64
    points = [sample_point(f"user-{n}") for n in range(20_000)]
    inside = sum(point < 0.1 for point in points)
    assert 1_800 < inside < 2_200  # ~10%, well within chance for 20,000 users
    assert points == [sample_point(f"user-{n}") for n in range(20_000)]


async def test_sampling_keeps_a_user_always_in_or_always_out() -> None:
    [sample] = build_chains(document("{sample: {fraction: 0.3}}", "sample"), PLUGIN)["web"]
    users = [f"user-{n}" for n in range(300)]
    first = await run_chain([sample], [track(userId=u) for u in users])
    second = await run_chain([sample], [track("Other", userId=u) for u in users])
    kept_first = {e.user_id for e in first.events}
    kept_second = {e.user_id for e in second.events}
    assert kept_first == kept_second
    assert 60 < len(kept_first) < 120
    assert kept_first == {u for u in users if sample_point(u) < 0.3}
    assert all("outside the 30% sample" in d.detail for _, d in first.dropped)
    # Without a userId, the anonymousId decides; with neither, the event is kept and said so.
    anonymous = [track(anonymousId=f"anon-{n}") for n in range(50)]
    for message in anonymous:
        message.pop("userId")
    anon_result = await run_chain([sample], anonymous)
    assert {e.anonymous_id for e in anon_result.events} == {
        m["anonymousId"] for m in anonymous if sample_point(m["anonymousId"]) < 0.3
    }


async def test_sampling_only_what_when_selects_and_by_another_field() -> None:
    [sample] = build_chains(
        document("""{sample: {fraction: 0.0, when: 'event = "Noise"', by: properties.account}}"""),
        PLUGIN,
    )["web"]
    noise = track("Noise", properties={"account": "acme"})
    signal = track("Signal", properties={"account": "acme"})
    unkeyed = track("Noise")
    result = await run_chain([sample], [noise, signal, unkeyed])
    assert [e.message_id for e in result.events] == [signal["messageId"], unkeyed["messageId"]]
    [skipped] = result.outcomes
    assert skipped.status == "skipped" and skipped.message_id == unkeyed["messageId"]
    assert "has no properties.account" in (skipped.detail or "")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "{drop: 'event = '}",
            "transforms.f.settings.drop: the condition does not parse: the condition ends too early",
        ),
        (
            """{drop: 'regex(event, "([a-z")'}""",
            "transforms.f.settings.drop: the condition does not parse: regex() pattern '([a-z' does not compile",
        ),
        (
            "{sample: {fraction: 0.5, when: 'nope('}}",
            "transforms.f.settings.sample.when: the condition does not parse",
        ),
        (
            "{sample: {fraction: 1.5}}",
            "transforms.f.settings.sample.fraction: expected `float` <= 1.0",
        ),
        (
            "{sample: {fraction: 0.5, by: propertys.x}}",
            "transforms.f.settings.sample.by: 'propertys.x' names no field",
        ),
        ("{}", "transforms.f.settings: a filter needs `drop`, `keep` or `sample`"),
        ("{drop: 'true', unknown: 1}", "transforms.f.settings.unknown: unknown setting 'unknown'"),
    ],
)
def test_bad_settings_are_refused_with_their_path_and_line(settings: str, expected: str) -> None:
    [error] = workspace_errors(document(settings), PLUGIN)
    assert error.startswith(expected), error
    assert error.endswith("(line 7)")
