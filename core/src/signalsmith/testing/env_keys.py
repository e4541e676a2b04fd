"""A plugin module for tests that run a real server process: write keys from the environment.

Load it with ``SIGNALSMITH_PLUGIN_MODULES=signalsmith.testing.env_keys`` and list keys as
``SIGNALSMITH_TEST_WRITE_KEYS=key1=source1,key2=source2``.
"""

from __future__ import annotations

import os

from signalsmith import hookimpl
from signalsmith.records import Credentials, Source


def _keys() -> dict[str, Source]:
    table: dict[str, Source] = {}
    for pair in os.environ.get("SIGNALSMITH_TEST_WRITE_KEYS", "").split(","):
        key, _, source = pair.strip().partition("=")
        if key:
            table[key] = Source(id=source or key, name=source or key)
    return table


_TABLE = _keys()


@hookimpl
def authenticate(credentials: Credentials) -> Source | None:
    for key in credentials.write_keys:
        if key in _TABLE:
            return _TABLE[key]
    return None
