"""A client connection's Redis session, kept by the proxy: AUTH, HELLO, SELECT, CLIENT, PING.

Upstream connections are shared by many clients, so whatever a client sets on "its"
connection must be kept by the proxy instead (Envoy's redis_proxy and twemproxy do the same):

* ``AUTH [user] password`` is checked against the listener's downstream password (RedisService
  ``settings.auth``); until it succeeds every other command gets ``-NOAUTH``.
* ``HELLO [2|3] [AUTH user pass] [SETNAME name]`` authenticates as AUTH does, picks RESP2 or
  RESP3 for this client and answers the server map itself.
* ``SELECT n`` picks the database. Protocol and database form the codec's ``wire_variant``,
  so the core pools this client with upstream connections opened in the same protocol and
  database (their codec sends ``HELLO 3`` / ``SELECT n`` first, see
  :meth:`RedisCodec.upstream_preamble`): a client in db 2 never shares a connection with one in
  db 0, and SELECT costs nothing per request.
* ``CLIENT SETNAME/GETNAME/ID/SETINFO`` are kept here; other ``CLIENT`` subcommands (KILL,
  TRACKING, PAUSE, ...) act on connections the client does not own and are refused.
* ``QUIT`` is answered ``+OK``; the client closes. ``PING`` and ``ECHO`` are answered here too
  (as Envoy's redis_proxy does): they say the proxy is there, and need no route.

Sans-IO like the codec: :meth:`Session.handle` returns the reply bytes.
"""

from __future__ import annotations

import hmac
import itertools
from typing import Final

from metamesh.codecs.redis.resp import bulk, error

OK: Final = b"+OK\r\n"
NOAUTH: Final = b"-NOAUTH Authentication required.\r\n"
WRONGPASS: Final = error("WRONGPASS invalid username-password pair or user is disabled.")
_ids = itertools.count(1)


class Session:
    """What one client set on its connection; ``variant`` is the codec's ``wire_variant``."""

    __slots__ = ("authenticated", "db", "id", "name", "password", "protocol", "username")

    def __init__(self, password: str | None, username: str, allow_select: bool = True) -> None:
        self.password = password
        self.username = username
        self.authenticated = password is None
        self.protocol = 2
        self.db = 0 if allow_select else -1  # -1: SELECT refused (cluster mode)
        self.name: bytes | None = None
        self.id = next(_ids)

    @property
    def variant(self) -> tuple[int, int] | None:
        db = max(self.db, 0)
        return None if (self.protocol, db) == (2, 0) else (self.protocol, db)

    def handle(self, command: str, args: list[bytes]) -> bytes:
        """The reply to local command ``command`` (lower-cased ``args[0]``)."""
        if command == "auth":
            return self._auth(args[1:])
        if command == "hello":
            return self._hello(args[1:])
        if command == "quit":
            return OK
        if not self.authenticated:
            return NOAUTH
        if command == "select":
            return self._select(args[1:])
        if command in ("ping", "echo"):
            return self._ping(command, args[1:])
        return self._client(args[1:])

    def _check(self, username: bytes, password: bytes) -> bool:
        if self.password is None:
            return False
        good_user = username.decode("utf-8", "replace") == self.username
        good = hmac.compare_digest(password, self.password.encode("utf-8")) and good_user
        if good:
            self.authenticated = True
        return good

    def _auth(self, args: list[bytes]) -> bytes:
        if len(args) not in (1, 2):
            return error("ERR wrong number of arguments for 'auth' command")
        if self.password is None:
            return error(
                "ERR AUTH <password> called without any password configured for the "
                "default user. Are you sure your configuration is correct?"
            )
        username = args[0] if len(args) == 2 else self.username.encode()
        return OK if self._check(username, args[-1]) else WRONGPASS

    def _hello(self, args: list[bytes]) -> bytes:
        protocol = self.protocol
        rest = args
        if rest:
            try:
                protocol = int(rest[0])
            except ValueError:
                return error("ERR Protocol version is not an integer or out of range")
            if protocol not in (2, 3):
                return error("NOPROTO unsupported protocol version")
            rest = rest[1:]
        name = self.name
        while rest:
            option = rest[0].lower()
            if option == b"auth" and len(rest) >= 3:
                if self.password is None or not self._check(rest[1], rest[2]):
                    return WRONGPASS
                rest = rest[3:]
            elif option == b"setname" and len(rest) >= 2:
                name = rest[1]
                rest = rest[2:]
            else:
                return error(
                    f"ERR Syntax error in HELLO option '{option.decode(errors='replace')}'"
                )
        if not self.authenticated:
            return error("NOAUTH HELLO must be called with the client already authenticated")
        self.protocol = protocol
        self.name = name
        return self._server_map()

    def _server_map(self) -> bytes:
        fields: list[tuple[bytes, bytes]] = [
            (b"server", bulk(b"redis")),
            (b"version", bulk(b"7.0.0")),
            (b"proto", b":%d\r\n" % self.protocol),
            (b"id", b":%d\r\n" % self.id),
            (b"mode", bulk(b"standalone" if self.db >= 0 else b"cluster")),
            (b"role", bulk(b"master")),
            (b"modules", b"*0\r\n"),
        ]
        head = b"%%%d\r\n" % len(fields) if self.protocol == 3 else b"*%d\r\n" % (2 * len(fields))
        return head + b"".join(bulk(k) + v for k, v in fields)

    def _select(self, args: list[bytes]) -> bytes:
        if len(args) != 1:
            return error("ERR wrong number of arguments for 'select' command")
        if self.db < 0:
            return error("ERR SELECT is not allowed in cluster mode")
        try:
            db = int(args[0])
        except ValueError:
            return error("ERR value is not an integer or out of range")
        if not 0 <= db < 1 << 16:
            return error("ERR DB index is out of range")
        self.db = db
        return OK

    def _ping(self, command: str, args: list[bytes]) -> bytes:
        if command == "ping" and not args:
            return b"+PONG\r\n"
        if len(args) == 1:
            return bulk(args[0])
        return error(f"ERR wrong number of arguments for '{command}' command")

    def _client(self, args: list[bytes]) -> bytes:
        sub = args[0].lower() if args else b""
        if sub == b"setname" and len(args) == 2:
            self.name = args[1] or None
            return OK
        if sub == b"getname":
            return bulk(self.name)
        if sub == b"id":
            return b":%d\r\n" % self.id
        if sub == b"setinfo" and len(args) == 3:
            return OK
        what = sub.decode("utf-8", "replace").upper() or "(none)"
        return error(f"ERR CLIENT {what} is not supported through the mesh")
