"""Remembered preferences: a user's last choice judges their later events without consent,
across identify and alias, a withdrawal from analytics-next's consent wrapper applies to every
event after it, and a user's record can be shown and erased (CLI and admin API)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
from click.testing import CliRunner

from signalsmith import Settings, Source
from signalsmith.testing import (
    Receiver,
    StaticKeys,
    alias,
    build_cli,
    collector_client,
    forwarding,
    identify,
    receivers,
    track,
)
from signalsmith_consent import plugin as consent
from signalsmith_consent.memory import ConsentMemory
from signalsmith_consent.testing import consent_document, declaring
from signalsmith_dest_webhook import plugin as webhook

CONSENT = (consent, "consent")
WEBHOOK = (webhook, "dest-webhook")
ADMIN_TOKEN = "ssadm_consent_test"
# Captured from analytics-next with its consent wrapper (tests/fixtures/client-requests/README.md).
FIXTURE = (
    Path(__file__).resolve().parents[3]
    / "tests/fixtures/client-requests/analytics-next-consent.jsonl"
)


def with_preferences(message: dict[str, Any], preferences: dict[str, bool]) -> dict[str, Any]:
    return {**message, "context": {"consent": {"categoryPreferences": preferences}}}


def updated(preferences: dict[str, bool], **ids: str) -> dict[str, Any]:
    return with_preferences(
        track("Segment Consent Preference Updated", properties={}, **ids), preferences
    )


def ids_at(receiver: Receiver) -> set[str]:
    return {event["messageId"] for event in receiver.payloads()}


async def test_a_choice_made_anonymously_follows_the_user_through_identify_and_alias(
    settings: Settings,
) -> None:
    needs = {"stats": ["analytics"]}
    anonymous, known, renamed = (f"{kind}-{uuid.uuid4().hex[:6]}" for kind in "akr")
    with receivers(*needs) as found:
        text = consent_document(
            {"stats": found["stats"].url}, needs, consent_section=declaring(["analytics"])
        )
        async with forwarding(settings, CONSENT, WEBHOOK, document=text) as run:
            # Granted while anonymous; identify links the anonymousId to the userId.
            await run.send(updated({"analytics": True}, anonymousId=anonymous, userId=None))
            await run.send(identify(userId=known, anonymousId=anonymous))
            as_user = track("Viewed", userId=known)
            # Withdrawn under the userId: applies to the anonymousId too.
            await run.send(as_user)
            await run.send(updated({"analytics": False}, userId=known))
            as_anonymous = track("Viewed", anonymousId=anonymous, userId=None)
            answer = await run.send(as_anonymous)
            assert answer["dropped"][0]["reason"] == "no_consent"
            # Granted again, then an alias: the old id's choice applies to the new one.
            await run.send(updated({"analytics": True}, userId=known))
            await run.send(alias(previous_id=known, userId=renamed))
            as_renamed = track("Viewed", userId=renamed)
            # Within one request too: the update judges the events after it, not before.
            before = track("Viewed", userId=renamed)
            after = track("Viewed", userId=renamed)
            batch = await run.send(before, updated({"analytics": False}, userId=renamed), after)
            await run.send(as_renamed)
            await run.wait_settled("stats")
            memory = ConsentMemory(run.runtime.redis, settings.key_prefix, 60)
            records = {r.identity: r for r in await memory.show(renamed)}
    delivered = ids_at(found["stats"])
    assert as_user["messageId"] in delivered
    assert as_anonymous["messageId"] not in delivered
    assert before["messageId"] in delivered
    assert [d["index"] for d in batch["dropped"]] == [1, 2]
    assert as_renamed["messageId"] not in delivered
    # One linked group, one choice, remembered with when it was made.
    assert set(records) == {anonymous, known, renamed}
    assert all(r.preferences == {"analytics": False} for r in records.values())
    assert set(records[renamed].linked) == {anonymous, known}
    assert records[renamed].since is not None and records[renamed].expires_in is not None
    # The delivered event carries what it was judged by (Segment's own shape).
    [stamped] = [e for e in found["stats"].payloads() if e["messageId"] == as_user["messageId"]]
    assert stamped["context"]["consent"] == {"categoryPreferences": {"analytics": True}}


def fixture_requests() -> list[tuple[str, bytes]]:
    """The first run of the captured consent session (lines 1-13): each POST's path and body."""
    requests = []
    for line in FIXTURE.read_text().splitlines()[:13]:
        request = json.loads(line)
        if request["method"] == "POST":
            body = base64.b64decode(request["body_base64"])
            requests.append((request["path"], body.replace(b"wk_fixture_0001", b"wk-web")))
    return requests


async def test_a_withdrawal_from_the_consent_wrapper_applies_to_every_later_event(
    settings: Settings,
) -> None:
    """analytics-next's consent wrapper stamps every browser event; a server-side source sends
    events for the same user without any. After the user's withdrawal (the wrapper's
    `Segment Consent Preference Updated`), the server's events no longer reach Analytics."""
    needs = {"amplitude": ["Analytics"], "gads": ["Advertising"]}
    requests = fixture_requests()
    withdrawal = next(i for i, (_, b) in enumerate(requests) if b"Preference Updated" in b)
    user = json.loads(requests[withdrawal][1])["userId"]
    with receivers(*needs) as found:
        text = consent_document(
            {n: r.url for n, r in found.items()},
            needs,
            consent_section=declaring(["Analytics", "Advertising"]),
        )
        async with forwarding(settings, CONSENT, WEBHOOK, document=text) as run:

            async def browser(path: str, body: bytes) -> None:
                response = await run.client.post(
                    path,
                    content=body,
                    headers={
                        "Content-Type": "text/plain",
                        "Authorization": "Basic " + base64.b64encode(b"wk-web:").decode(),
                    },
                )
                assert response.status_code == 200, response.text

            for path, body in requests[:withdrawal]:
                await browser(path, body)
            server_before = track("Invoice Paid", userId=user, context={})
            await run.send(server_before)
            for path, body in requests[withdrawal:]:
                await browser(path, body)
            server_after = track("Invoice Paid", userId=user, context={})
            await run.send(server_after)
            await run.wait_settled(*needs)
    browser_ids = [json.loads(body)["messageId"] for _, body in requests]
    amplitude, gads = ids_at(found["amplitude"]), ids_at(found["gads"])
    # Browser events are judged by their own stamp: Analytics until the change, then Advertising.
    assert amplitude >= set(browser_ids[:withdrawal])
    assert gads >= set(browser_ids[withdrawal:])
    assert not (amplitude & set(browser_ids[withdrawal:]))
    # The server's events are judged by the user's last choice when they arrived.
    assert server_before["messageId"] in amplitude and server_before["messageId"] not in gads
    assert server_after["messageId"] not in amplitude and server_after["messageId"] in gads


async def test_a_users_record_is_shown_and_erased_by_cli_and_admin_api(
    settings: Settings,
) -> None:
    user, anonymous = f"u-{uuid.uuid4().hex[:6]}", f"a-{uuid.uuid4().hex[:6]}"
    admin_settings = msgspec.structs.replace(settings, admin_token=ADMIN_TOKEN)
    keys = StaticKeys({"wk-web": Source(id="web", name="web")})
    auth = {"Authorization": "Basic " + base64.b64encode(b"wk-web:").decode()}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with collector_client(admin_settings, (keys, "keys"), CONSENT) as client:
        message = updated({"marketing": False}, userId=user, anonymousId=anonymous)
        response = await client.post("/v1/batch", json={"batch": [message]}, headers=auth)
        assert response.status_code == 200, response.text

        shown = await client.get(f"/api/v1/admin/consent/{anonymous}", headers=admin)
        assert shown.status_code == 200, shown.text
        [record, linked] = shown.json()["records"]
        assert record["identity"] == anonymous and record["linked"] == [user]
        assert record["preferences"] == {"marketing": False}
        assert record["message_id"] == message["messageId"]
        assert linked["identity"] == user
        assert (await client.get(f"/api/v1/admin/consent/{user}")).status_code == 401

        cli = build_cli(settings)
        printed = await asyncio.to_thread(CliRunner().invoke, cli, ["consent", "show", user])
        assert printed.exit_code == 0, printed.output
        assert "marketing=False" in printed.output and anonymous in printed.output
        assert f"since:       {record['since']}" in printed.output

        erased = await asyncio.to_thread(CliRunner().invoke, cli, ["consent", "forget", user])
        assert erased.exit_code == 0, erased.output
        assert user in erased.output and anonymous in erased.output
        assert (await client.get(f"/api/v1/admin/consent/{user}", headers=admin)).status_code == 404
        again = await asyncio.to_thread(CliRunner().invoke, cli, ["consent", "show", anonymous])
        assert "nothing is remembered" in again.output

        await client.post("/v1/batch", json={"batch": [message]}, headers=auth)
        forgotten = await client.delete(f"/api/v1/admin/consent/{user}", headers=admin)
        assert forgotten.status_code == 200
        assert sorted(forgotten.json()["erased"]) == sorted([user, anonymous])
        assert (
            await client.get(f"/api/v1/admin/consent/{anonymous}", headers=admin)
        ).status_code == 404


async def test_remembered_preferences_live_as_long_as_the_workspace_says(
    settings: Settings,
) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    with receivers("stats") as found:
        text = consent_document(
            {"stats": found["stats"].url},
            {"stats": ["analytics"]},
            consent_section=declaring(["analytics"], "  remember_days: 2\n"),
        )
        async with forwarding(settings, CONSENT, WEBHOOK, document=text) as run:
            await run.send(updated({"analytics": True}, userId=user))
            memory = ConsentMemory(run.runtime.redis, settings.key_prefix, 60)
            [record] = await memory.show(user)
            await run.apply(text.replace("remember_days: 2", "remember: false"))
            # Not remembering: an event without consent is not judged, nor is anything written.
            other = f"u-{uuid.uuid4().hex[:6]}"
            await run.send(updated({"analytics": False}, userId=other))
            assert await memory.show(other) == []
    assert record.expires_in is not None and 86_400 < record.expires_in <= 2 * 86_400
