"""The admin API's frame: the admin token, the guard on ``/api/v1/admin``, and a client for it.

Plugins add admin endpoints with the ``register_admin_routes`` hook; every one of them sits
behind the guard. The token comes from ``SIGNALSMITH_ADMIN_TOKEN``; the embedded ``serve``
generates one on first start, keeps it in the data directory and prints it that once. Without a
token configured the admin API answers 401 to everything: it is never open by accident. The
token travels one way only, ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import httpx
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from signalsmith.config import Settings

ADMIN_PATH = "/api/v1/admin"
ADMIN_TOKEN_FILE = "admin-token"
# Written by the embedded `serve` so local commands can find the running server.
SERVER_FILE = "server.json"


def read_admin_token(data_dir: Path) -> str | None:
    """The admin token kept in ``data_dir``, if there is one."""
    try:
        return (data_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_admin_token(data_dir: Path) -> str:
    """The admin token kept in ``data_dir``, created (mode 0600) on first use."""
    token = read_admin_token(data_dir)
    if token:
        return token
    path = data_dir / ADMIN_TOKEN_FILE
    token = f"ssadm_{secrets.token_urlsafe(32)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as token_file:
        token_file.write(token + "\n")
    return token


def presented_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The token a request offers in ``Authorization: Bearer <token>``."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def make_admin_guard(settings: Settings):  # type: ignore[no-untyped-def]
    """A Litestar guard that admits only requests carrying the configured admin token."""
    expected = (settings.admin_token or "").encode()

    def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not expected:
            raise NotAuthorizedException(
                "the admin API is disabled: set SIGNALSMITH_ADMIN_TOKEN (the embedded "
                "`signalsmith serve` creates one in its data directory)"
            )
        token = presented_token(connection)
        if token is None:
            raise NotAuthorizedException(
                "admin token required: send Authorization: Bearer <SIGNALSMITH_ADMIN_TOKEN>"
            )
        # Constant time, so the comparison leaks nothing about how much of a guess was right.
        if not hmac.compare_digest(token.encode(), expected):
            raise NotAuthorizedException("admin token not recognised")

    return admin_guard


def write_server_file(data_dir: Path, url: str) -> None:
    """Record where the embedded server listens, for local admin commands (`signalsmith sql`)."""
    (data_dir / SERVER_FILE).write_text(json.dumps({"url": url, "pid": os.getpid()}))


def remove_server_file(data_dir: Path) -> None:
    (data_dir / SERVER_FILE).unlink(missing_ok=True)


class AdminClient:
    """A small client for the admin API of a running server (used by CLI commands)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url + ADMIN_PATH,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    @classmethod
    def for_local_server(cls, settings: Settings) -> AdminClient | None:
        """A client for the embedded server running on this data directory, if one answers."""
        server_file = settings.data_path / SERVER_FILE
        if not server_file.exists():
            return None
        url = json.loads(server_file.read_text())["url"]
        token = settings.admin_token or ensure_admin_token(settings.data_path)
        client = cls(url, token)
        try:
            # 503 is a running server with a part down (its Redis restarting): still the one
            # holding the data directory.
            answer = httpx.get(f"{client.base_url}/healthz", timeout=2)
        except httpx.HTTPError:
            answer = None
        if answer is None or answer.status_code not in (200, 503):
            client.close()
            return None
        return client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._client.request(method, path, **kwargs)

    def close(self) -> None:
        self._client.close()
