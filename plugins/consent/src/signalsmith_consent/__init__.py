"""Consent for SignalSmith: the categories each sink needs, enforced at collection (an event is
stamped with the preferences it is judged by, or dropped when no sink may receive it) and by the
worker per sink, with each user's last preferences remembered in Redis."""

from __future__ import annotations

from signalsmith_consent.memory import ConsentMemory, Remembered
from signalsmith_consent.settings import DEFAULT_CATEGORIES, ConsentSection, SourceConsent

__all__ = [
    "DEFAULT_CATEGORIES",
    "ConsentMemory",
    "ConsentSection",
    "Remembered",
    "SourceConsent",
]
