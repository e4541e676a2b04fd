"""A circuit breaker, so a dead lookup service costs nothing after a few failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("signalsmith.transform.enrich")

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Closed: every call goes through. ``failures`` failures in a row open it: calls are
    refused at once. After ``reset_seconds`` it is half-open: one probe goes through; a success
    closes it, a failure opens it for another ``reset_seconds``."""

    def __init__(
        self,
        name: str,
        failures: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.state: State = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False

    def allow(self) -> bool:
        """Whether a call may go through now (a half-open breaker lets one probe through)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.reset_seconds:
                return False
            self.state = "half-open"
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def succeeded(self) -> None:
        if self.state != "closed":
            log.info("lookup %s: service answers again; circuit closed", self.name)
        self.state = "closed"
        self.failures = 0
        self.probing = False

    def failed(self) -> None:
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.threshold:
            if self.state != "open":
                log.warning(
                    "lookup %s: %d failures in a row; circuit open for %gs",
                    self.name,
                    self.failures,
                    self.reset_seconds,
                )
            self.state = "open"
            self.opened_at = self.clock()
            self.probing = False

    def released(self) -> None:
        """A probe that ended neither way (cancelled): let another one through."""
        self.probing = False
