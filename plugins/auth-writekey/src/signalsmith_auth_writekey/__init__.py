"""Write-key authentication for SignalSmith: keys kept in Redis as SHA-256 hashes.

The plugin itself is ``signalsmith_auth_writekey.plugin``; ``KeyStore`` and ``ensure_dev_key``
are here for the core and other plugins to use.
"""

from __future__ import annotations

from signalsmith_auth_writekey.keys import (
    InvalidSourceName,
    KeyRecord,
    KeyStore,
    ensure_dev_key,
    hash_key,
    store_for,
)

__version__ = "0.1.0"

__all__ = [
    "InvalidSourceName",
    "KeyRecord",
    "KeyStore",
    "__version__",
    "ensure_dev_key",
    "hash_key",
    "store_for",
]
