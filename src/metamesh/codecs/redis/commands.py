"""The Redis command table: where each command's keys are, whether it reads or writes, and
which commands the proxy answers itself or refuses.

Routing needs a request's keys (prefix routes, cluster slots), mirrors need to know writes
from reads (``excludeReadCommands``), and a shared upstream connection must never carry a
command whose effect outlives it (``MULTI``, ``SUBSCRIBE``) or that holds it (``BLPOP``). The
facts come from redis-server's own ``COMMAND`` output (key specs first/last/step and the
``readonly``/``write`` flags), written down for the commands clients use; a command missing
here is forwarded with no key (it goes to the catch-all route) and counts as a write.

Key positions: ``(first, last, step)`` as in ``COMMAND`` (``last`` -1 = through the last
argument, -2 = all but the last one), or a ``numkeys`` form: ``N1`` numkeys at argument 1
(``ZUNION 2 a b``), ``N2`` at argument 2 (``EVAL script 2 a b``), ``D2`` a destination at 1
and numkeys at 2 (``ZUNIONSTORE dst 2 a b``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """What the proxy knows about one command."""

    name: str
    write: bool
    first: int = 0
    last: int = 0
    step: int = 1
    numkeys: str = ""  # "", "N1", "N2" or "D2" (see the module docstring)

    def keys(self, args: list[bytes]) -> list[int]:
        """Indexes of the key arguments of ``args`` (``args[0]`` is the command)."""
        n = len(args)
        if self.first == 1 and self.last == 1:  # most commands: one key, the first argument
            return [1] if n > 1 else []
        if self.numkeys:
            return _numkeys_positions(self.numkeys, args)
        if self.first <= 0 or self.first >= n:
            return []
        last = self.last
        if last < 0:
            last = n + last
        last = min(last, n - 1)
        return list(range(self.first, last + 1, self.step))


def _numkeys_positions(form: str, args: list[bytes]) -> list[int]:
    at = 1 if form == "N1" else 2
    if len(args) <= at:
        return []
    try:
        count = int(args[at])
    except ValueError:
        return []
    count = max(0, min(count, len(args) - at - 1))
    keys = list(range(at + 1, at + 1 + count))
    return [1, *keys] if form == "D2" else keys


_READ: Final = """
get 1 1 1 | getrange 1 1 1 | strlen 1 1 1 | substr 1 1 1 | mget 1 -1 1 | exists 1 -1 1
type 1 1 1 | ttl 1 1 1 | pttl 1 1 1 | expiretime 1 1 1 | pexpiretime 1 1 1 | dump 1 1 1
hget 1 1 1 | hmget 1 1 1 | hgetall 1 1 1 | hkeys 1 1 1 | hvals 1 1 1 | hlen 1 1 1
hexists 1 1 1 | hstrlen 1 1 1 | hrandfield 1 1 1 | hscan 1 1 1 | lindex 1 1 1 | llen 1 1 1
lrange 1 1 1 | lpos 1 1 1 | scard 1 1 1 | sismember 1 1 1 | smismember 1 1 1
smembers 1 1 1 | srandmember 1 1 1 | sscan 1 1 1 | sdiff 1 -1 1 | sinter 1 -1 1
sunion 1 -1 1 | sintercard N1 | zcard 1 1 1 | zcount 1 1 1 | zlexcount 1 1 1
zrange 1 1 1 | zrangebylex 1 1 1 | zrangebyscore 1 1 1 | zrank 1 1 1 | zrevrange 1 1 1
zrevrangebylex 1 1 1 | zrevrangebyscore 1 1 1 | zrevrank 1 1 1 | zscore 1 1 1
zmscore 1 1 1 | zscan 1 1 1 | zrandmember 1 1 1 | zdiff N1 | zinter N1 | zunion N1
bitcount 1 1 1 | bitpos 1 1 1 | getbit 1 1 1 | bitfield_ro 1 1 1 | pfcount 1 -1 1
geodist 1 1 1 | geohash 1 1 1 | geopos 1 1 1 | georadius_ro 1 1 1
georadiusbymember_ro 1 1 1 | geosearch 1 1 1 | xlen 1 1 1 | xrange 1 1 1
xrevrange 1 1 1 | xpending 1 1 1 | touch 1 -1 1 | lcs 1 2 1 | sort_ro 1 1 1
eval_ro N2 | evalsha_ro N2 | fcall_ro N2 | randomkey 0 0 0 | dbsize 0 0 0 | keys 0 0 0
scan 0 0 0 | info 0 0 0 | time 0 0 0 | lastsave 0 0 0 | command 0 0 0 | object 2 2 1
memory 0 0 0 | xinfo 2 2 1
"""

_WRITE: Final = """
set 1 1 1 | setnx 1 1 1 | setex 1 1 1 | psetex 1 1 1 | getset 1 1 1 | getdel 1 1 1
getex 1 1 1 | append 1 1 1 | incr 1 1 1 | decr 1 1 1 | incrby 1 1 1 | decrby 1 1 1
incrbyfloat 1 1 1 | setrange 1 1 1 | mset 1 -1 2 | msetnx 1 -1 2 | del 1 -1 1
unlink 1 -1 1 | expire 1 1 1 | pexpire 1 1 1 | expireat 1 1 1 | pexpireat 1 1 1
persist 1 1 1 | rename 1 2 1 | renamenx 1 2 1 | copy 1 2 1 | move 1 1 1 | restore 1 1 1
hset 1 1 1 | hsetnx 1 1 1 | hmset 1 1 1 | hdel 1 1 1 | hincrby 1 1 1
hincrbyfloat 1 1 1 | lpush 1 1 1 | rpush 1 1 1 | lpushx 1 1 1 | rpushx 1 1 1
lpop 1 1 1 | rpop 1 1 1 | linsert 1 1 1 | lset 1 1 1 | lrem 1 1 1 | ltrim 1 1 1
rpoplpush 1 2 1 | lmove 1 2 1 | sadd 1 1 1 | srem 1 1 1 | spop 1 1 1 | smove 1 2 1
sdiffstore 1 -1 1 | sinterstore 1 -1 1 | sunionstore 1 -1 1 | zadd 1 1 1 | zincrby 1 1 1
zrem 1 1 1 | zremrangebylex 1 1 1 | zremrangebyrank 1 1 1 | zremrangebyscore 1 1 1
zpopmin 1 1 1 | zpopmax 1 1 1 | zrangestore 1 2 1 | zunionstore D2 | zinterstore D2
zdiffstore D2 | setbit 1 1 1 | bitfield 1 1 1 | bitop 2 -1 1 | pfadd 1 1 1
pfmerge 1 -1 1 | geoadd 1 1 1 | georadius 1 1 1 | georadiusbymember 1 1 1
geosearchstore 1 2 1 | xadd 1 1 1 | xdel 1 1 1 | xtrim 1 1 1 | xgroup 2 2 1 | xack 1 1 1
xclaim 1 1 1 | xautoclaim 1 1 1 | xsetid 1 1 1 | sort 1 1 1 | eval N2 | evalsha N2
fcall N2 | lmpop N1 | zmpop N1 | flushdb 0 0 0 | flushall 0 0 0
"""

#: Commands that hold or change the state of the connection they travel on: a shared upstream
#: connection cannot carry them. Answered with an ``-ERR`` that says why.
REFUSED: Final = {
    "multi": "transactions (MULTI/EXEC) need a dedicated connection",
    "exec": "transactions (MULTI/EXEC) need a dedicated connection",
    "discard": "transactions (MULTI/EXEC) need a dedicated connection",
    "watch": "WATCH needs a dedicated connection",
    "unwatch": "WATCH needs a dedicated connection",
    "subscribe": "pub/sub needs a dedicated connection",
    "psubscribe": "pub/sub needs a dedicated connection",
    "ssubscribe": "pub/sub needs a dedicated connection",
    "unsubscribe": "pub/sub needs a dedicated connection",
    "punsubscribe": "pub/sub needs a dedicated connection",
    "sunsubscribe": "pub/sub needs a dedicated connection",
    "monitor": "MONITOR needs a dedicated connection",
    "sync": "replication is not proxied",
    "psync": "replication is not proxied",
    "replconf": "replication is not proxied",
    "replicaof": "replication is not proxied",
    "slaveof": "replication is not proxied",
    "failover": "replication is not proxied",
    "shutdown": "SHUTDOWN is not proxied",
    "debug": "DEBUG is not proxied",
    "reset": "RESET is not proxied",
    "readonly": "READONLY/READWRITE change the connection",
    "readwrite": "READONLY/READWRITE change the connection",
    "blpop": "blocking commands would hold a shared connection",
    "brpop": "blocking commands would hold a shared connection",
    "brpoplpush": "blocking commands would hold a shared connection",
    "blmove": "blocking commands would hold a shared connection",
    "blmpop": "blocking commands would hold a shared connection",
    "bzpopmin": "blocking commands would hold a shared connection",
    "bzpopmax": "blocking commands would hold a shared connection",
    "bzmpop": "blocking commands would hold a shared connection",
    "wait": "blocking commands would hold a shared connection",
    "waitaof": "blocking commands would hold a shared connection",
    "xread": "XREAD is not proxied (its keys follow STREAMS and BLOCK would hold the connection)",
    "xreadgroup": "XREADGROUP is not proxied (keys follow STREAMS, BLOCK holds the connection)",
}

#: Commands the proxy answers itself (connection state kept per client by the codec).
LOCAL: Final = frozenset({"auth", "hello", "select", "quit", "client", "ping", "echo"})


def _table() -> dict[str, CommandSpec]:
    table: dict[str, CommandSpec] = {}
    for text, write in ((_READ, False), (_WRITE, True)):
        for entry in text.replace("\n", "|").split("|"):
            parts = entry.split()
            if not parts:
                continue
            name = parts[0]
            if len(parts) == 2:
                table[name] = CommandSpec(name, write, numkeys=parts[1])
            else:
                first, last, step = (int(p) for p in parts[1:])
                table[name] = CommandSpec(name, write, first, last, step)
    return table


COMMANDS: Final = _table()


def command_spec(name: str) -> CommandSpec | None:
    """The spec of lower-cased command ``name``, or None for a command not in the table."""
    return COMMANDS.get(name)
