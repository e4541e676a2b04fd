"""An admit_events refusal: a 429 with its two headers, or another 4xx without them."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from signalsmith import Refusal, Settings, Source, hookimpl
from signalsmith.testing import StaticKeys, collector_client, track
from signalsmith.testing.stream import read_events

KEY = "wk_refusal_test"


class Refuses:
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal

    @hookimpl
    def admit_events(self, source: Source, count: int) -> Refusal:
        return self.refusal


@pytest.mark.parametrize(
    ("refusal", "status", "headers"),
    [
        (
            Refusal(retry_after=3, reset_after=7, message="slow down"),
            429,
            {"retry-after": "3", "x-ratelimit-reset": "7"},
        ),
        (
            Refusal(retry_after=2, message="slow down"),
            429,
            {"retry-after": "2", "x-ratelimit-reset": "2"},
        ),
        (
            Refusal(status=413, retry_after=0, reason="batch_over_burst", message="split it"),
            413,
            {},
        ),
        (
            Refusal(status=401, retry_after=0, reason="write_key_revoked", message="revoked"),
            401,
            {},
        ),
    ],
    ids=["429-reset", "429-default-reset", "413", "401"],
)
async def test_refusal_status_and_headers(
    settings: Settings,
    redis: aioredis.Redis,
    refusal: Refusal,
    status: int,
    headers: dict[str, str],
) -> None:
    async with collector_client(
        settings, (StaticKeys({KEY: Source(id="web", name="web")}), "keys"), Refuses(refusal)
    ) as client:
        response = await client.post("/v1/track", json=track(), auth=(KEY, ""))

    assert response.status_code == status
    assert response.json() == {"code": refusal.reason, "message": refusal.message}
    got = {
        name: response.headers[name]
        for name in ("retry-after", "x-ratelimit-reset")
        if name in response.headers
    }
    assert got == headers
    assert await read_events(redis, settings.key_prefix) == []
