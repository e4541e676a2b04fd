"""Follows the ``P:keys:changes`` channel so a collector drops a changed key from its cache at once.

Every change to a key (create, revoke, rotate, plan) publishes the key's hash. Pub/sub delivers
only while subscribed, so whenever the subscription starts or breaks the whole cache is dropped,
and while it is down the store caches for about a second only (``KeyStore.unsubscribed_ttl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from signalsmith_auth_writekey.keys import KeyStore

log = logging.getLogger("signalsmith.auth_writekey")

# How long one read waits for a message; bounds how late a broken connection is noticed.
POLL_SECONDS = 1.0
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class InvalidationListener:
    """A background task subscribed to the store's changes channel."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._task: asyncio.Task[None] | None = None
        # How many times the subscription was confirmed (tests wait on it; retries reset on it).
        self.subscriptions = 0
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="auth-writekey invalidations"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # The flag as well as the cancel: on Python 3.11 a cancel that lands as a read's own
        # timeout fires is swallowed (asyncio.timeout), and the loop must still end.
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=POLL_SECONDS * 3)

    async def _run(self) -> None:
        delay = RETRY_MIN_SECONDS
        while not self._stopping:
            confirmed = self.subscriptions
            try:
                await self._listen()
            except (RedisError, OSError) as error:
                log.warning(
                    "write-key changes channel lost (%s); caching keys for %.0f s until it is back",
                    error,
                    self.store.unsubscribed_ttl,
                )
            delay = RETRY_MIN_SECONDS if self.subscriptions != confirmed else delay
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _listen(self) -> None:
        store = self.store
        pubsub = store.redis.pubsub()
        try:
            await pubsub.subscribe(store.changes_channel)
            while not self._stopping:
                message = await pubsub.get_message(timeout=POLL_SECONDS)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # From here on every change reaches us; forget what we might have missed.
                    store.forget_all()
                    store.subscribed = True
                    self.subscriptions += 1
                elif message["type"] == "message":
                    store.forget(_text(message["data"]))
        finally:
            store.subscribed = False
            store.forget_all()
            # Shielded: closing must finish even when the task is being cancelled.
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())
