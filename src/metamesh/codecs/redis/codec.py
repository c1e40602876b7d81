"""The Redis codec: RESP2/RESP3 requests with routable metadata, replies matched in order.

Redis has no request ids, so :attr:`RedisCodec.request_id_bits` is ``None`` and the proxy
answers each client in request order; :attr:`RedisCodec.shares_upstream` tells the core that
clients may still share upstream connections (replies come back in send order on each one),
because everything that would tie a request to its connection is kept by the proxy
(:mod:`.session`) or refused (:data:`~.commands.REFUSED`).

A client-side codec (the default) decodes requests. Metadata, for routes, mirrors, faults
and authorization:

* ``command``: the command, lower-cased (``get``, ``set``);
* ``key``: its first key (lower-cased when the listener is case-insensitive), absent for
  commands without keys, which therefore only match a catch-all route;
* ``keys``: every key, joined by ``,``; ``db``: the client's database;
* ``access``: ``read`` for read-only commands, ``write`` otherwise (unknown commands too);
* ``slot``: in cluster mode (option ``mode: CLUSTER``), the first key's Redis Cluster slot
  (hashtags honoured, :mod:`.cluster`).

In cluster mode an ``MGET`` whose keys live in several slots comes out in parts: a
``HEARTBEAT`` whose reply is the array header ``*<n>``, then one ``GET`` per key, each routed
to its slot's owner; the core answers a client in request order, so the client reads one
array, as from MGET. (DEL, EXISTS and MSET, whose replies are not a concatenation, are not
split: Redis answers CROSSSLOT.)

Commands the proxy answers itself (AUTH, HELLO, SELECT, CLIENT ..., QUIT, refused commands,
and anything before a required AUTH) come out as ``HEARTBEAT`` messages: the core's path for a
frame the codec answers and that is never forwarded; :meth:`heartbeat_reply` gives the reply.

An upstream codec (after :meth:`upstream_preamble`) decodes replies: any RESP value, an error
reply (``-`` or ``!``) as status ``ERROR``, a ``-MOVED``/``-ASK`` one with a
:class:`~metamesh.codecs.message.Redirect` as its ``codec_state`` (followed by clusters in
cluster mode). It consumes the replies to its own preamble
(``AUTH``, ``HELLO 3``, ``SELECT``) itself; a refused AUTH is a :class:`CodecError`, which
fails the connection and answers its clients with an error. In cluster mode the preamble ends
with ``CLUSTER SLOTS``, whose reply comes out as a ``HEARTBEAT`` carrying an
:class:`~metamesh.codecs.message.Ownership` (the slot table, adopted by the cluster).

The one mutation applied is ``redis-remove-prefix: <prefix>`` (RedisService
``removePrefix``): the prefix is cut from every key that starts with it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import ClassVar, Final

from metamesh.codecs.base import Codec
from metamesh.codecs.message import (
    CodecError,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ResponseStatus,
)
from metamesh.codecs.redis.cluster import (
    CLUSTER_SLOTS,
    key_slot,
    parse_cluster_slots,
    parse_redirect,
)
from metamesh.codecs.redis.commands import LOCAL, REFUSED, command_spec
from metamesh.codecs.redis.resp import encode_command, error, parse_command, value_end
from metamesh.codecs.redis.session import NOAUTH, Session

#: The request mutation carrying RedisService ``removePrefix``.
REMOVE_PREFIX: Final = "redis-remove-prefix"
#: Redis's own limit on a bulk string (proto-max-bulk-len): the default frame limit here.
DEFAULT_MAX_SIZE: Final = 512 * 1024 * 1024

_REQUEST = MessageType.REQUEST
_RESPONSE = MessageType.RESPONSE
_HEARTBEAT = MessageType.HEARTBEAT
_ERROR_PREFIXES = (ord("-"), ord("!"))

_KIND_TEXT: Final = {
    ErrorKind.ROUTE_NOT_FOUND: "ERR no route",
    ErrorKind.CLUSTER_NOT_FOUND: "ERR no upstream cluster",
    ErrorKind.NO_HEALTHY_UPSTREAM: "ERR no healthy upstream",
    ErrorKind.OVER_LIMIT: "ERR over limit",
    ErrorKind.TIMEOUT: "ERR upstream timeout",
    ErrorKind.UPSTREAM_RESET: "ERR upstream failure",
    ErrorKind.BAD_REQUEST: "ERR bad request",
    ErrorKind.BAD_RESPONSE: "ERR upstream failure",
    ErrorKind.UNAUTHORIZED: "NOPERM",
    ErrorKind.FAULT_ABORT: "ERR Fault Injected",
    ErrorKind.UNSPECIFIED: "ERR proxy error",
}


class RequestState:
    """What a decoded request keeps: its arguments, command and database (for the metadata,
    built on first access), its key positions (found on first need: metadata, or the
    ``removePrefix`` mutation), and the reply of a message the codec answers itself."""

    __slots__ = ("_key_indexes", "args", "command", "db", "reply")

    def __init__(
        self, args: list[bytes], command: str = "", db: int = 0, reply: bytes = b""
    ) -> None:
        self.args = args
        self.command = command
        self.db = db
        self.reply = reply  # the local reply of a HEARTBEAT message
        self._key_indexes: list[int] | None = None

    @property
    def key_indexes(self) -> list[int]:
        indexes = self._key_indexes
        if indexes is None:
            spec = command_spec(self.command)
            indexes = self._key_indexes = spec.keys(self.args) if spec is not None else []
        return indexes


class RedisCodec(Codec):
    """RESP2/RESP3, client side (requests) unless made an upstream codec."""

    name: ClassVar[str] = "redis"
    request_id_bits: ClassVar[int | None] = None
    shares_upstream: ClassVar[bool] = True

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_SIZE, options: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        options = options or {}
        password = options.get("auth_password")
        self.case_insensitive = options.get("case_insensitive", "") in ("1", "true")
        cluster = options.get("mode", "").upper() == "CLUSTER"
        #: Cluster mode: requests carry their first key's ``slot``; SELECT is refused.
        self.cluster = cluster
        self.session = Session(
            password or None, options.get("auth_username") or "default", not cluster
        )
        self.upstream = False
        #: An MGET being split (cluster mode): its parts still to hand out, from this buffer.
        self._split: list[tuple[int, Message]] | None = None
        self._split_buffer: bytearray | None = None
        self._preamble_replies = 0
        #: Which preamble reply (counting down) answers CLUSTER SLOTS; 0: none asked.
        self._slots_reply = 0
        self._expected: Hashable | None = None

    # --- client side --------------------------------------------------------------------

    def decode(self, buffer: bytearray) -> Message | None:
        split = self._split
        if split is not None and buffer is self._split_buffer:
            return self._next_part(buffer, split)
        while True:
            found = self._reply_at(buffer, 0) if self.upstream else self._request_at(buffer, 0)
            if found is None:
                return None
            msg, end = found
            if msg is None:  # a preamble reply, a push, or a blank inline line: skip it
                del buffer[:end]
                continue
            if self.cluster and msg.type is _REQUEST and buffer[0] == 0x2A:
                parts = self._split_mget(msg, end)
                if parts is not None:
                    self._split, self._split_buffer = parts, buffer
                    return self._next_part(buffer, parts)
            msg.frame = bytes(buffer[:end])
            del buffer[:end]
            return msg

    def _split_mget(self, msg: Message, end: int) -> list[tuple[int, Message]] | None:
        """Cluster mode: an MGET whose keys live in several slots, as (bytes it stands for,
        message) parts: the reply's array header, answered here, then one GET per key; their
        replies, in order, are exactly the array the client asked for."""
        state = msg.codec_state
        if not isinstance(state, RequestState) or state.command != "mget":
            return None
        keys = state.args[1:]
        if len({key_slot(k) for k in keys}) < 2:
            return None
        head = len(b"*%d\r\n$4\r\n" % len(state.args)) + len(state.args[0]) + 2
        parts = [(head, self._local(b"*%d\r\n" % len(keys), "mget"))]
        for key in keys:
            frame = encode_command([b"GET", key])
            found = self._request_at(frame, 0)
            assert found is not None and found[0] is not None
            found[0].frame = frame
            parts.append((len(b"$%d\r\n" % len(key)) + len(key) + 2, found[0]))
        return parts if sum(n for n, _ in parts) == end else None

    def _next_part(self, buffer: bytearray, parts: list[tuple[int, Message]]) -> Message:
        size, msg = parts.pop(0)
        del buffer[:size]
        if not parts:
            self._split = self._split_buffer = None
        return msg

    def _local(self, reply: bytes, command: str) -> Message:
        state = RequestState([], command, reply=reply)
        return Message(_HEARTBEAT, None, b"", 0, 0, {"command": command}, codec_state=state)

    def decode_at(self, data: bytes, pos: int) -> Message | None:
        if self._preamble_replies if self.upstream else self.cluster:
            return None  # (cluster mode: decode may split an MGET into parts)
        found = self._reply_at(data, pos) if self.upstream else self._request_at(data, pos)
        if found is None:
            return None
        msg, end = found
        if msg is None:  # something decode skips: left to it
            return None
        msg.frame = data if pos == 0 and end == len(data) else data[pos:end]
        return msg

    def _request_at(self, buf: bytes | bytearray, pos: int) -> tuple[Message | None, int] | None:
        parsed = parse_command(buf, pos, self.max_frame_size)
        if parsed is None:
            return None
        args, end = parsed
        if not args:
            return None, end
        size = end - pos
        command = args[0].decode("utf-8", "replace").lower()
        session = self.session
        if command in LOCAL or not session.authenticated or command in REFUSED:
            if command in LOCAL:
                reply = session.handle(command, args)
                self.wire_variant = session.variant
            elif not session.authenticated:
                reply = NOAUTH
            else:
                reply = error(f"ERR {command.upper()} is not supported: {REFUSED[command]}")
            state = RequestState(args, command, reply=reply)
            md = {"command": command}
            return Message(_HEARTBEAT, None, b"", size, 0, md, codec_state=state), end
        state = RequestState(args, command, max(session.db, 0))
        msg = Message(_REQUEST, None, b"", size, 0, None, codec_state=state, loader=self._metadata)
        return msg, end

    def _metadata(self, msg: Message) -> dict[str, str]:
        """A request's metadata, built when something first asks (a catch-all route and no
        filter never do)."""
        state: RequestState = msg.codec_state
        command = state.command
        spec = command_spec(command)
        md = {"command": command, "access": "write" if spec is None or spec.write else "read"}
        indexes = state.key_indexes
        if indexes:
            args = state.args
            keys = [args[i].decode("utf-8", "surrogateescape") for i in indexes]
            key = keys[0]
            md["key"] = key.lower() if self.case_insensitive else key
            md["keys"] = ",".join(keys)
            if self.cluster:
                md["slot"] = str(key_slot(args[indexes[0]]))
        md["db"] = str(state.db)
        return md

    def heartbeat_reply(self, message: Message) -> bytes | None:
        state = message.codec_state
        return state.reply if isinstance(state, RequestState) and state.reply else None

    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if not mutation:
            return message.frame
        prefix = mutation.get(REMOVE_PREFIX)
        state = message.codec_state
        if len(mutation) > (1 if prefix is not None else 0):
            self.dropped_mutations += 1
        if not prefix or not isinstance(state, RequestState):
            return message.frame
        raw = prefix.encode("utf-8", "surrogateescape")
        args = list(state.args)
        changed = False
        for i in state.key_indexes:
            key = args[i]
            head = key[: len(raw)]
            if head == raw or (self.case_insensitive and head.lower() == raw.lower()):
                args[i] = key[len(raw) :]
                changed = True
        return encode_command(args) if changed else message.frame

    def error_reply(self, request: Message, error_: LocalError) -> bytes:
        head = _KIND_TEXT.get(error_.kind, "ERR proxy error")
        return error(f"{head}: {error_.message}" if error_.message else head)

    # --- upstream side ------------------------------------------------------------------

    def expect_variant(self, variant: Hashable | None) -> None:
        self._expected = variant

    def upstream_preamble(self, options: Mapping[str, str]) -> bytes | None:
        """Make this an upstream codec; the commands to send before the first request:
        ``AUTH`` with the cluster's credentials, ``HELLO 3`` and ``SELECT`` for the clients'
        protocol and database (the ``wire_variant`` given to :meth:`expect_variant`)."""
        self.upstream = True
        commands: list[list[bytes]] = []
        password = options.get("auth_password")
        if password:
            user = options.get("auth_username")
            auth = [b"AUTH", user.encode()] if user else [b"AUTH"]
            commands.append([*auth, password.encode()])
        variant = self._expected
        if isinstance(variant, tuple) and len(variant) == 2:
            protocol, db = variant
            if protocol == 3:
                commands.append([b"HELLO", b"3"])
            if db:
                commands.append([b"SELECT", str(db).encode()])
        self._preamble_replies = len(commands)
        preamble = b"".join(encode_command(c) for c in commands)
        if options.get("mode", "").upper() == "CLUSTER":  # ask for the slot owners first
            self._preamble_replies += 1
            self._slots_reply = 1
            preamble += CLUSTER_SLOTS
        return preamble or None

    def _reply_at(self, buf: bytes | bytearray, pos: int) -> tuple[Message | None, int] | None:
        end = value_end(buf, pos, self.max_frame_size)
        if end is None:
            return None
        first = buf[pos]
        if self._preamble_replies:
            left = self._preamble_replies
            self._preamble_replies = left - 1
            if left == self._slots_reply:  # the last one: CLUSTER SLOTS, for the slot table
                if first in _ERROR_PREFIXES:
                    return None, end  # (owners are then learned from MOVED replies)
                frame = bytes(buf[pos:end])
                owners = parse_cluster_slots(frame)
                return Message(_HEARTBEAT, None, b"", end - pos, 0, {}, codec_state=owners), end
            if first in _ERROR_PREFIXES:
                text = bytes(buf[pos + 1 : min(end, pos + 200)]).strip().decode(errors="replace")
                raise CodecError(f"upstream refused the connection setup: {text}")
            return None, end
        if first == ord(">"):  # an out-of-band push (RESP3): belongs to no request
            return None, end
        if first not in _ERROR_PREFIXES:
            return Message(_RESPONSE, None, b"", end - pos, 0, None, ResponseStatus.OK), end
        redirect = None
        if buf[pos + 1 : pos + 2] in (b"M", b"A"):  # -MOVED / -ASK (Redis Cluster)
            redirect = parse_redirect(bytes(buf[pos:end]))
        size = end - pos
        return Message(_RESPONSE, None, b"", size, 0, None, ResponseStatus.ERROR, redirect), end
