"""Reading a request body off the ASGI channel: its Content-Encoding, its size limit, its deadline.

The limit holds while reading and while decoding (a decompression bomb is never inflated past
it, whatever the coding), and one shared timer bounds how long a whole body may take
(``ReadDeadlines``), so a client that trickles a body, or never sends it, cannot hold a
connection. `docs/input.md` lists what is read and what is refused.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import brotli
from litestar.types import Receive


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class BodyTimeout(Exception):
    """The body did not arrive within the read timeout."""


class BodyIncomplete(Exception):
    """The body ended before it was whole: the client went away, or its chunked framing broke.

    Granian says both the same way (``http.disconnect``).
    """


class BadEncoding(Exception):
    """The body is not what its Content-Encoding says."""

    def __init__(self, encoding: str, detail: str) -> None:
        super().__init__(detail)
        self.encoding = encoding
        self.detail = detail


class _Decoder(Protocol):
    def decode(self, data: bytes, room: int) -> bytes:
        """The output of ``data``: all of it, or (about) ``room`` bytes when there is more."""
        ...

    def finish(self) -> None:
        """Raise when the encoded data ended before its end."""
        ...


_GZIP_WBITS = 16 + zlib.MAX_WBITS


class _Gzip:
    """gzip with every member: RFC 1952 lets a body be members end to end (``gzip -c a;
    gzip -c b``). NUL bytes after the last are padding, as gzip(1) reads them; anything else
    after it is an error, not silently dropped."""

    def __init__(self) -> None:
        self._member: Any = zlib.decompressobj(_GZIP_WBITS)
        self._padded = False

    def decode(self, data: bytes, room: int) -> bytes:
        pieces: list[bytes] = []
        # `decompress(data, 0)` would mean no limit: stop once the room is used up.
        while data and room > 0:
            member = self._member
            if member is None:  # between members: another member, or the NUL padding
                if data[0] == 0:
                    self._padded = True
                    data = data.lstrip(b"\x00")
                    continue
                if self._padded:
                    raise zlib.error("data after the NUL bytes that pad the end of the gzip body")
                member = self._member = zlib.decompressobj(_GZIP_WBITS)
            out = member.decompress(data, room)
            pieces.append(out)
            room -= len(out)
            if member.eof:
                data = member.unused_data
                self._member = None
            else:
                data = member.unconsumed_tail
        return b"".join(pieces)

    def finish(self) -> None:
        if self._member is not None:
            raise zlib.error("the gzip data ends early (truncated, or not gzip)")


def _zlib_header(head: bytes) -> bool:
    """Whether ``head`` starts a zlib stream (RFC 1950): deflate, a window, a valid check."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


class _Deflate:
    """deflate: zlib-wrapped as RFC 9110 says, or raw deflate, as some clients send it (and
    browsers and curl accept). A raw stream cannot start like a zlib header."""

    def __init__(self) -> None:
        self._inflater: Any = None
        self._head = b""

    def decode(self, data: bytes, room: int) -> bytes:
        inflater = self._inflater
        if inflater is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            wbits = zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS
            inflater = self._inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, room)
        if inflater.unused_data:
            raise zlib.error("data after the end of the deflate stream")
        return out

    def finish(self) -> None:
        if self._inflater is None or not self._inflater.eof:
            raise zlib.error("the deflate data ends early (truncated, or not deflate)")


class _Brotli:
    """br (RFC 7932); brotli 1.2's decompressor can bound the output of each call."""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def decode(self, data: bytes, room: int) -> bytes:
        decompressor = self._decompressor
        pieces = [decompressor.process(data, output_buffer_limit=room)]
        room -= len(pieces[0])
        # Output held back by the limit comes out of further calls with no input.
        while room > 0 and not decompressor.can_accept_more_data():
            more = decompressor.process(b"", output_buffer_limit=room)
            if not more:
                break
            pieces.append(more)
            room -= len(more)
        return b"".join(pieces)

    def finish(self) -> None:
        if not self._decompressor.is_finished():
            raise brotli.error("the brotli data ends early (truncated, or not brotli)")


DECODERS: dict[str, Callable[[], _Decoder]] = {"gzip": _Gzip, "deflate": _Deflate, "br": _Brotli}
SUPPORTED_ENCODINGS = ", ".join(DECODERS)


def content_coding(value: bytes | None) -> str | None:
    """The coding a Content-Encoding header names: ``identity`` for none, None if unsupported.

    One coding at most (no client stacks them); ``x-gzip`` is gzip (RFC 9110).
    """
    if value is None:
        return "identity"
    names = [name.strip() for name in value.decode("latin-1").lower().split(",")]
    names = [name for name in names if name and name != "identity"]
    if not names:
        return "identity"
    if len(names) > 1:
        return None
    name = "gzip" if names[0] == "x-gzip" else names[0]
    return name if name in DECODERS else None


async def read_body(receive: Receive, *, limit: int, encoding: str = "identity") -> bytes:
    """The request body, decoded from ``encoding``, refused as soon as it passes ``limit`` bytes.

    A decompression bomb is never inflated past the limit: the decoder is asked for at most
    ``limit + 1`` bytes at a time.
    """
    decoder = None if encoding == "identity" else DECODERS[encoding]()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete()
        chunk = message.get("body", b"")
        if chunk:
            if decoder is not None:
                try:
                    chunk = decoder.decode(chunk, limit + 1 - size)
                except (zlib.error, brotli.error) as error:
                    raise BadEncoding(encoding, str(error)) from None
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            if chunk:
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if decoder is not None:
        try:
            decoder.finish()
        except (zlib.error, brotli.error) as error:
            raise BadEncoding(encoding, str(error)) from None
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


T = TypeVar("T")


class _Read:
    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


class ReadDeadlines:
    """Cuts off body reads that outlive ``timeout`` seconds, with one timer for all of them.

    ``asyncio.timeout`` sets and cancels a timer per request, about 4 µs with uvloop; here a
    read costs a dict entry, and one timer, running only while reads are in progress, looks at
    them every quarter of the timeout (a second at most). A read is cut off between ``timeout``
    and ``timeout`` plus that after it began.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._every = min(timeout / 4, 1.0)
        self._reads: dict[asyncio.Task[Any], _Read] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def within(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, or raise BodyTimeout once the timeout is past."""
        task = asyncio.current_task()
        if task is None:  # not run as a task: nothing to cancel
            return await awaitable
        loop = task.get_loop()
        read = _Read(task, loop.time() + self.timeout)
        self._reads[task] = read
        if self._timer is None:
            self._timer = loop.call_later(self._every, self._sweep, loop)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not read.expired:
                raise
            task.uncancel()
            raise BodyTimeout() from None
        finally:
            del self._reads[task]

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._reads:
            return
        now = loop.time()
        for read in list(self._reads.values()):
            if read.deadline <= now and not read.expired:
                read.expired = True
                read.task.cancel()
        self._timer = loop.call_later(self._every, self._sweep, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
