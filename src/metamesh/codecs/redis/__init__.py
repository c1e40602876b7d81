"""Redis codec: RESP2/RESP3 framing (:mod:`.resp`), the command table (:mod:`.commands`), the
per-client session the proxy keeps (:mod:`.session`) and :class:`RedisCodec` (:mod:`.codec`).
"""

from metamesh.codecs.redis.codec import REMOVE_PREFIX, RedisCodec

__all__ = ["REMOVE_PREFIX", "RedisCodec"]
