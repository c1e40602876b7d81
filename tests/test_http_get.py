"""The admin's and monitoring port's GET server over a real socket on 127.0.0.1."""

from __future__ import annotations

import asyncio

from metamesh.http_get import is_loopback, serve_get


async def exchange(request: bytes) -> tuple[bytes, list[tuple[str, bool]]]:
    seen: list[tuple[str, bool]] = []

    async def respond(target: str, from_loopback: bool) -> tuple[int, str, bytes]:
        seen.append((target, from_loopback))
        return (200, "text/plain", b"hello\n") if target == "/hi" else (404, "text/plain", b"")

    server = await asyncio.start_server(lambda r, w: serve_get(respond, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()  # (a head that never ends is then an EOF, not a 10 s wait)
    answer = await reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    return answer, seen


def test_get_post_and_garbage() -> None:
    answer, seen = asyncio.run(exchange(b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhello\n")
    assert b"Content-Length: 6\r\n" in answer and seen == [("/hi", True)]
    answer, seen = asyncio.run(exchange(b"GET /nope HTTP/1.1\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
    answer, seen = asyncio.run(exchange(b"POST /hi HTTP/1.1\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and seen == []
    answer, seen = asyncio.run(exchange(b"garbage\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and seen == []
    answer, seen = asyncio.run(exchange(b"GET /hi HTTP/1.1\r\n"))  # head never ends: EOF
    assert answer == b"" and seen == []


def test_loopback_peers() -> None:
    assert is_loopback(("127.0.0.1", 1)) and is_loopback(("::1", 1, 0, 0))
    assert not is_loopback(("198.18.0.1", 1)) and not is_loopback(None)
    assert not is_loopback(("not an address", 1))
