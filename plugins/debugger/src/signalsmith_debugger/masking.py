"""Secrets kept out of what the debugger stores: reasons and details pass through a mask.

A sink's error message may quote what it was configured with (a URL with a token, a header). The
values this process resolved for the workspace's ``${ENV_NAME}`` placeholders, and the admin
token, are replaced by ``(secret)`` wherever they appear; so are the credentials in any URL
(``https://user:password@host``).
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from signalsmith import Runtime

log = logging.getLogger("signalsmith.debugger")

MASK = "(secret)"
# Shorter values would garble ordinary words if masked everywhere; no real secret is this short.
MIN_SECRET_CHARS = 6
_PLACEHOLDER = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")


class SecretMask:
    """Masks the secrets of the workspace version a process runs (rebuilt when it changes)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._built_for: Any = object()
        self._secrets: tuple[str, ...] = ()

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        active = self.runtime.workspace.active
        if active is not self._built_for:
            self._secrets = self._collect(active)
            self._built_for = active
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "@" in text:
            text = _URL_CREDENTIALS.sub(lambda match: f"{match.group(1)}{MASK}@", text)
        return text

    def _collect(self, active: Any) -> tuple[str, ...]:
        found: set[str] = set()
        token = self.runtime.settings.admin_token
        if token:
            found.add(token)
        if active is not None:
            try:
                written = msgspec.json.encode(active.document)
            except (TypeError, ValueError) as error:  # an unusual section type: mask less
                log.warning("debugger: cannot read the workspace's placeholders: %s", error)
                written = b""
            for name in set(_PLACEHOLDER.findall(written)):
                value = os.environ.get(name.decode())
                if value:
                    found.add(value)
        # Longest first, so a secret that contains another is masked whole.
        return tuple(
            sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)
        )
