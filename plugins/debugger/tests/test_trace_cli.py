"""`signalsmith trace ID`: the answer and every step, from Redis, with or without a server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner

from signalsmith import Settings
from signalsmith.testing import StaticKeys, build_cli, collector_client, plugin_manager, track


def test_trace_answers_where_an_event_went(admin_settings: Settings, kit: Any) -> None:
    body = track("Order Completed", userId="ada", properties={"writeKey": "wk-in-props-0001"})
    batch = [track("", userId="ada")]  # rejected at normalise: no event name

    async def send() -> None:
        pm = plugin_manager(StaticKeys(kit.KEYS), kit.DEBUGGER)
        async with kit.with_worker(
            admin_settings, collector_client(admin_settings, pm=pm)
        ) as client:
            await client.post("/v1/track", json=body, headers=kit.basic())
            await client.post("/v1/batch", json={"batch": batch}, headers=kit.basic())
            await kit.trace_of(client, body["messageId"], lambda t: len(t["steps"]) == 2)
            await kit.trace_of(client, batch[0]["messageId"])

    asyncio.run(send())
    cli = build_cli(admin_settings)
    runner = CliRunner()

    shown = runner.invoke(cli, ["trace", body["messageId"]])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"messageId  {body['messageId']}"
    assert lines[1] == "source     web"
    assert lines[2] == "event      track 'Order Completed', user ada"
    assert lines[3] == "answer     accepted and buffered; no sink has reported it yet"
    assert lines[5].split() == ["time", "process", "stage", "status", "sink", "why"]
    assert [line.split()[1:4] for line in lines[6:]] == [
        ["worker", "normalise", "accepted"],
        ["worker", "buffer", "buffered"],
    ]

    with_payloads = runner.invoke(cli, ["trace", body["messageId"], "--payloads"])
    assert '"event": "Order Completed"' in with_payloads.stdout
    assert "wk-in-props-0001" not in with_payloads.stdout

    as_json = json.loads(runner.invoke(cli, ["trace", body["messageId"], "--json"]).stdout)
    assert as_json["summary"] == "accepted and buffered; no sink has reported it yet"
    assert [step["status"] for step in as_json["steps"]] == ["accepted", "buffered"]

    rejected = runner.invoke(cli, ["trace", batch[0]["messageId"]])
    assert "answer     rejected at normalise: missing_event" in rejected.stdout

    unknown = runner.invoke(cli, ["trace", "never-sent"])
    assert unknown.exit_code == 1
    assert "no trace of messageId 'never-sent'" in unknown.stderr
