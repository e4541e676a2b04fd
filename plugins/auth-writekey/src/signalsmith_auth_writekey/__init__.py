"""Write keys for SignalSmith: authentication, key management and per-key rate limits by plan.

The plugin itself is ``signalsmith_auth_writekey.plugin``; the store, records and plans are here
for the core and other plugins to use.
"""

from __future__ import annotations

from signalsmith_auth_writekey.keys import (
    InvalidSourceName,
    KeyConflict,
    KeyInfo,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    WriteKeySource,
    ensure_dev_key,
    hash_key,
    store_for,
)
from signalsmith_auth_writekey.limits import Decision, RateLimiter
from signalsmith_auth_writekey.plans import PLANS, InvalidPlan, Limits, Plan, limits_for

__version__ = "0.2.0"

__all__ = [
    "PLANS",
    "Decision",
    "InvalidPlan",
    "InvalidSourceName",
    "KeyConflict",
    "KeyInfo",
    "KeyNotFound",
    "KeyRecord",
    "KeyStore",
    "Limits",
    "Plan",
    "RateLimiter",
    "WriteKeySource",
    "__version__",
    "ensure_dev_key",
    "hash_key",
    "limits_for",
    "store_for",
]
