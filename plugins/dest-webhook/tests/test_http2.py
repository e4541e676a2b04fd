"""HTTP/2 where the receiver speaks it: a real Granian server over TLS (a certificate made for
the test, trusted through ``ca_file``) records the HTTP version of every request it gets."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signalsmith import Settings
from signalsmith.testing import forwarding, track
from signalsmith_dest_webhook import plugin as webhook

APP = textwrap.dedent(
    """\
    import os

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        with open(os.environ["VERSIONS_FILE"], "a") as versions:
            versions.write(scope["http_version"] + "\\n")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    """
)


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PKCS#8, as Granian reads it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signalsmith-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(URL, the certificate to trust, the file of HTTP versions seen) of a TLS receiver."""
    cert, key = certificate(tmp_path)
    (tmp_path / "h2app.py").write_text(APP)
    versions = tmp_path / "versions"
    versions.touch()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from granian import Granian;"
        "Granian('h2app:app', interface='asgi', address='127.0.0.1', port=int(sys.argv[2]),"
        " http='auto', ssl_cert=Path(sys.argv[3]), ssl_key=Path(sys.argv[4]),"
        " log_enabled=False).serve()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), str(port), str(cert), str(key)],
        env={"VERSIONS_FILE": str(versions), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the TLS receiver did not start") from None
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", cert, versions
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize(("http2", "expected"), [(True, "2"), (False, "1.1")])
async def test_http2_is_used_where_the_receiver_offers_it(
    settings: Settings, tls_receiver: tuple[str, Path, Path], http2: bool, expected: str
) -> None:
    url, cert, versions = tls_receiver
    text = f"""\
        version: 1
        sources:
          web: {{destinations: [hook]}}
        destinations:
          hook:
            type: webhook
            settings: {{url: "{url}/in", ca_file: "{cert}", http2: {str(http2).lower()}}}
            max_wait_seconds: 0.05
        """
    async with forwarding(settings, (webhook, "dest-webhook"), document=text) as run:
        await run.send(track("One"), track("Two"))
        await run.wait_settled("hook")
        assert await run.dead_lettered("hook") == {}
    await asyncio.sleep(0)
    assert versions.read_text().split() == [expected, expected]
