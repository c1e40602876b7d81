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
  (hashtags honoured, :mod:`.cluster`);
* ``read_policy``: in cluster mode, on read commands, the RedisService's ``readPolicy`` (option
  ``read_policy``) when it is not ``MASTER``: ``PREFER_MASTER``, ``REPLICA``,
  ``PREFER_REPLICA`` or ``ANY``, which the core's slot-aware pick follows
  (:meth:`metamesh.proxy.pool.UpstreamPool._slot_owner`).

Upstream, in cluster mode, a connection first asks ``CLUSTER SLOTS`` (the slot owners and their
replicas), after ``READONLY`` when the cluster option ``readonly`` is ``true`` (some listener
reads from replicas, which serve reads only to connections that said so).

A multi-key command (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) whose keys go to several
places (several prefix routes: option ``route_prefixes``; several slots in cluster mode) comes
out in parts, one request per key (:data:`SPLIT`), each with a :class:`PartState` (a
:class:`~metamesh.codecs.message.ReplyPart`) naming its :class:`MergeGroup`; the core hands
each part's reply (or local error) to :meth:`RedisCodec.merge_reply`, which answers ``b""``
until the last one and then the one reply the client expects, in the place of the whole group
since the core answers in request order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import ClassVar, Final

from metamesh.codecs.base import REPLY_ERROR, REPLY_OK, REPLY_SKIP, Codec
from metamesh.codecs.message import (
    CodecError,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    Mutation,
    Ownership,
    ReplyPart,
    ResponseStatus,
)
from metamesh.codecs.redis.cluster import (
    CLUSTER_SLOTS,
    READONLY,
    REPLICA_READ_POLICIES,
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

#: Command names as clients spell them (``GET``, ``get``) -> lower-case text; filled as
#: requests come, with known commands only (so bounded by the command table's spellings).
_NAMES: Final[dict[bytes, str]] = {}

#: ``db`` metadata of the first databases, made once.
_DB_TEXT: Final = tuple(str(n) for n in range(16))
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


class MergeGroup:
    """The parts of one split client request and how their replies combine: ``array``
    (MGET: the parts' values in one array, a WRONGTYPE part as nil), ``sum`` (DEL, UNLINK,
    EXISTS, TOUCH: the parts' counts added) or ``ok`` (MSET: +OK). Any other error reply of
    a part is the reply of the whole, as Redis would give one error for the command."""

    __slots__ = ("kind", "left", "replies")

    def __init__(self, kind: str, count: int) -> None:
        self.kind = kind
        self.left = count
        self.replies: list[bytes] = [b""] * count

    def merged(self) -> bytes:
        replies = self.replies
        if self.kind == "array":
            values = [b"$-1\r\n" if r.startswith(b"-WRONGTYPE") else r for r in replies]
            failed = next((r for r in values if r[:1] in (b"-", b"!")), None)
            return failed or b"*%d\r\n" % len(values) + b"".join(values)
        failed = next((r for r in replies if r[:1] in (b"-", b"!")), None)
        if failed is not None:
            return failed
        if self.kind == "sum":
            return b":%d\r\n" % sum(int(r[1:].strip() or b"0") for r in replies)
        return b"+OK\r\n"


class PartState(ReplyPart):
    """A part of a split client request: its own request state, its group and place. (It holds
    a :class:`RequestState` rather than extending it: :class:`ReplyPart` is compiled in the
    native build, where a class cannot have it and another slotted class as bases.)"""

    __slots__ = ("group", "index", "request")

    def __init__(self, request: RequestState, group: MergeGroup, index: int) -> None:
        self.request = request
        self.group = group
        self.index = index


def request_state(msg: Message) -> RequestState | None:
    """The :class:`RequestState` of a request message (a part's own), or None."""
    state = msg.codec_state
    if isinstance(state, PartState):
        return state.request
    return state if isinstance(state, RequestState) else None


#: Multi-key commands split across slots in cluster mode: name -> (arguments per key, the
#: command each part runs, how the replies merge).
SPLIT: Final = {
    "mget": (1, b"GET", "array"),
    "del": (1, b"DEL", "sum"),
    "unlink": (1, b"UNLINK", "sum"),
    "exists": (1, b"EXISTS", "sum"),
    "touch": (1, b"TOUCH", "sum"),
    "mset": (2, b"SET", "ok"),
}


class RedisCodec(Codec):
    """RESP2/RESP3, client side (requests) unless made an upstream codec."""

    name: ClassVar[str] = "redis"
    request_id_bits: ClassVar[int | None] = None
    shares_upstream: ClassVar[bool] = True
    runs: ClassVar[bool] = True

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
        policy = options.get("read_policy", "").upper()
        #: Cluster mode: where reads may go, when not only to the slot's primary.
        self.read_policy = policy if cluster and policy in REPLICA_READ_POLICIES else ""
        #: The RedisService's key prefixes, longest first (lower-cased when case-insensitive).
        prefixes = [p for p in options.get("route_prefixes", "").split("\n") if p]
        self.route_prefixes = sorted(
            (
                (p.lower() if self.case_insensitive else p).encode("utf-8", "surrogateescape")
                for p in prefixes
            ),
            key=len,
            reverse=True,
        )
        #: Multi-key commands whose keys go to several places are split (:data:`SPLIT`).
        self.splits = cluster or bool(self.route_prefixes)
        self.session = Session(
            password or None, options.get("auth_username") or "default", not cluster
        )
        self.upstream = False
        #: An MGET being split (cluster mode): its parts still to hand out, from this buffer.
        self._split: list[tuple[int, Message]] | None = None
        self._split_buffer: bytearray | None = None
        #: A part's frame re-encoded by a mutation, which the core decodes again next.
        self._reencoded: tuple[bytes, PartState] | None = None
        self._preamble_replies = 0
        #: Which preamble reply (counting down) answers CLUSTER SLOTS; 0: none asked.
        self._slots_reply = 0
        #: An upstream connection to a Redis Cluster node (its slot table can be asked again).
        self._cluster_upstream = False
        self._expected: Hashable | None = None
        #: :meth:`_metadata` bound once (a bound method per request is an allocation).
        self._loader = self._metadata

    # --- client side --------------------------------------------------------------------

    def decode(self, buffer: bytearray) -> Message | None:
        split = self._split
        if split is not None and buffer is self._split_buffer:
            return self._next_part(buffer, split)
        again = self._reencoded
        if again is not None and buffer == again[0]:  # a part after a mutation (removePrefix)
            self._reencoded = None
            frame, old = again
            args = parse_command(frame, 0, self.max_frame_size)
            assert args is not None
            del buffer[:]
            own = RequestState(args[0], old.request.command, old.request.db)
            state = PartState(own, old.group, old.index)
            return Message(
                _REQUEST, None, frame, len(frame), 0, codec_state=state, loader=self._loader
            )
        while True:
            found = self._reply_at(buffer, 0) if self.upstream else self._request_at(buffer, 0)
            if found is None:
                return None
            msg, end = found
            if msg is None:  # a preamble reply, a push, or a blank inline line: skip it
                del buffer[:end]
                continue
            if self.splits and msg.type is _REQUEST and buffer[0] == 0x2A:
                parts = self._split_multi(msg, end)
                if parts is not None:
                    self._split, self._split_buffer = parts, buffer
                    return self._next_part(buffer, parts)
            msg.frame = bytes(buffer[:end])
            del buffer[:end]
            return msg

    def _split_multi(self, msg: Message, end: int) -> list[tuple[int, Message]] | None:
        """Cluster mode: a multi-key command (:data:`SPLIT`) whose keys live in several slots,
        as (bytes of the client's frame it stands for, message) parts, one per key, each routed
        to its slot's owner; :meth:`merge_reply` makes their replies one."""
        state = msg.codec_state
        if not isinstance(state, RequestState) or state.command not in SPLIT:
            return None
        step, sub, kind = SPLIT[state.command]
        args = state.args
        if len(args) < 1 + step or (len(args) - 1) % step:
            return None
        keys = args[1::step]
        if len({self._group(k) for k in keys}) < 2:
            return None
        head = len(b"*%d\r\n$%d\r\n" % (len(args), len(args[0]))) + len(args[0]) + 2
        group = MergeGroup(kind, len(keys))
        parts: list[tuple[int, Message]] = []
        for index in range(len(keys)):
            chunk = args[1 + index * step : 1 + (index + 1) * step]
            size = sum(len(b"$%d\r\n" % len(a)) + len(a) + 2 for a in chunk)
            part = [sub, *chunk]
            frame = encode_command(part)
            pstate = PartState(RequestState(part, sub.decode().lower(), state.db), group, index)
            m = Message(
                _REQUEST, None, frame, len(frame), 0, codec_state=pstate, loader=self._loader
            )
            parts.append((size + (head if index == 0 else 0), m))
        return parts if sum(n for n, _ in parts) == end else None

    def _group(self, key: bytes) -> tuple[bytes, int]:
        """Where ``key`` goes: its route (the longest matching prefix, as the routes are
        ordered) and, in cluster mode, its slot."""
        probe = key.lower() if self.case_insensitive else key
        prefix = next((p for p in self.route_prefixes if probe.startswith(p)), b"")
        return prefix, key_slot(key) if self.cluster else 0

    def merge_reply(self, part: ReplyPart, reply: bytes) -> bytes:
        if not isinstance(part, PartState):
            return reply
        group = part.group
        group.replies[part.index] = reply
        group.left -= 1
        return group.merged() if group.left == 0 else b""

    def _next_part(self, buffer: bytearray, parts: list[tuple[int, Message]]) -> Message:
        size, msg = parts.pop(0)
        del buffer[:size]
        if not parts:
            self._split = self._split_buffer = None
        return msg

    def decode_at(self, data: bytes, pos: int) -> Message | None:
        if self.upstream and self._preamble_replies:
            return None
        if self._reencoded is not None:  # a split part after removePrefix: decode keeps it one
            return None
        found = self._reply_at(data, pos) if self.upstream else self._request_at(data, pos)
        if found is None:
            return None
        msg, end = found
        if msg is None:  # something decode skips: left to it
            return None
        state = msg.codec_state
        if self.splits and type(state) is RequestState and state.command in SPLIT:  # (plain)
            return None  # decode may split it into parts
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
        raw = args[0]
        command = _NAMES.get(raw)
        if command is None:
            command = raw.decode("utf-8", "replace").lower()
            if command_spec(command) is not None or command in LOCAL:  # bounded: known names
                _NAMES[raw] = command
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
        db = session.db
        state = RequestState(args, command, db if db > 0 else 0)
        msg = Message(_REQUEST, None, b"", size, 0, None, codec_state=state, loader=self._loader)
        return msg, end

    def _metadata(self, msg: Message) -> dict[str, str]:
        """A request's metadata, built when something first asks (a catch-all route and no
        filter never do)."""
        state = msg.codec_state
        if type(state) is not RequestState:
            state = request_state(msg)
            assert state is not None
        command = state.command
        spec = command_spec(command)
        access = "write" if spec is None or spec.write else "read"
        db = state.db
        db_text = _DB_TEXT[db] if db < len(_DB_TEXT) else str(db)
        indexes = state.key_indexes
        if not indexes:
            return {"command": command, "access": access, "db": db_text}
        args = state.args
        if len(indexes) == 1:  # most commands: one literal, no resize, no list of names
            key = args[indexes[0]].decode("utf-8", "surrogateescape")
            keys = key
        else:
            names = [args[i].decode("utf-8", "surrogateescape") for i in indexes]
            key = names[0]
            keys = ",".join(names)
        if self.case_insensitive:
            key = key.lower()
        if not self.cluster:
            return {"command": command, "access": access, "key": key, "keys": keys, "db": db_text}
        md = {"command": command, "access": access, "key": key, "keys": keys}
        md["slot"] = str(key_slot(args[indexes[0]]))
        if self.read_policy and access == "read":
            md["read_policy"] = self.read_policy
        md["db"] = db_text
        return md

    def heartbeat_reply(self, message: Message) -> bytes | None:
        state = message.codec_state
        return state.reply if isinstance(state, RequestState) and state.reply else None

    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if not mutation:
            return message.frame
        prefix = mutation.get(REMOVE_PREFIX)
        state = request_state(message)
        if len(mutation) > (1 if prefix is not None else 0):
            self.dropped_mutations += 1
        if not prefix or state is None:
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
        if not changed:
            return message.frame
        out = encode_command(args)
        part = message.codec_state
        if isinstance(part, PartState):  # the core decodes it again: keep it a part
            self._reencoded = (out, part)
        return out

    def error_reply(self, request: Message, error_: LocalError) -> bytes:
        head = _KIND_TEXT.get(error_.kind, "ERR proxy error")
        reply = error(f"{head}: {error_.message}" if error_.message else head)
        state = request.codec_state
        return self.merge_reply(state, reply) if isinstance(state, PartState) else reply

    # --- upstream side ------------------------------------------------------------------

    def ownership_query(self) -> bytes:
        return CLUSTER_SLOTS if self._cluster_upstream else b""

    def ownership(self, reply: Message) -> Ownership | None:
        frame = reply.frame
        if not frame or frame[0] in _ERROR_PREFIXES:
            return None
        try:
            return parse_cluster_slots(bytes(frame))
        except CodecError:  # a table the node garbled: the one the proxy has stays
            return None

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
            self._cluster_upstream = True
            if options.get("readonly") == "true":  # replicas then serve this connection reads
                self._preamble_replies += 1
                preamble += READONLY
            self._preamble_replies += 1
            self._slots_reply = 1
            preamble += CLUSTER_SLOTS
        return preamble or None

    def reply_run(self, buf: bytes | bytearray, pos: int, count: int, ends: list[int]) -> int:
        """Up to ``count`` replies at ``buf[pos:]`` for a run of pipelined requests (see
        :meth:`Codec.reply_run`): one :func:`value_end` walk each. Setup replies still owed
        (AUTH, HELLO, SELECT, READONLY, CLUSTER SLOTS: runs never go to cluster connections,
        whose table the proxy reads through :meth:`decode`) and RESP3 pushes are skipped as
        :meth:`decode` skips them; a refused setup raises :class:`CodecError` as there."""
        max_size = self.max_frame_size
        size = len(buf)
        taken = 0
        while taken < count and pos < size:
            end = value_end(buf, pos, max_size)
            if end is None:
                break
            first = buf[pos]
            left = self._preamble_replies
            if left:
                self._preamble_replies = left - 1
                if left != self._slots_reply and first in _ERROR_PREFIXES:
                    text = (
                        bytes(buf[pos + 1 : min(end, pos + 200)]).strip().decode(errors="replace")
                    )
                    raise CodecError(f"upstream refused the connection setup: {text}")
                ends.append(end << 2 | REPLY_SKIP)
            elif first == 0x3E:  # '>': an out-of-band push (RESP3): belongs to no request
                ends.append(end << 2 | REPLY_SKIP)
            else:
                ends.append(end << 2 | (REPLY_ERROR if first in _ERROR_PREFIXES else REPLY_OK))
                taken += 1
            pos = end
        return taken

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
