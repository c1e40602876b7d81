"""The tiny HTTP/1.1 GET server behind the proxy admin and the control plane's monitoring port.

One request per connection: a request head of at most the stream reader's limit read within
10 s, ``GET`` only (``405`` otherwise, ``400`` for a malformed request line), the answer written
with its length and ``Connection: close``. What to answer is the caller's ``respond(target,
from_loopback)``; a client that goes away or stalls is dropped quietly. It sits at the bottom
of the package (no metamesh imports) so the xds layer and the runtime share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable

#: ``respond(target, from_loopback)`` -> (status, content type, body)
Responder = Callable[[str, bool], Awaitable[tuple[int, str, bytes]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def serve_get(
    respond: Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer one GET on this connection with ``respond``, then close it."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(words) != 3:
            status, ctype, body = 400, "text/plain", b"bad request\n"
        elif words[0] != "GET":
            status, ctype, body = 405, "text/plain", b"GET only\n"
        else:
            peer = writer.get_extra_info("peername")
            status, ctype, body = await respond(words[1], is_loopback(peer))
        reason = _REASONS.get(status, "Service Unavailable")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def is_loopback(peer: object) -> bool:
    """Whether a socket's ``peername`` is a loopback address."""
    if not isinstance(peer, tuple) or not peer:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(str(peer[0])).is_loopback
    return False
