"""Kafka codec: primitive types (:mod:`.wire`), API keys (:mod:`.apis`), request headers and
topics (:mod:`.requests`), rewritten and local responses (:mod:`.responses`) and
:class:`KafkaCodec` (:mod:`.codec`). See docs/kafka.md.
"""

from metamesh.codecs.kafka.codec import KafkaCodec, SharedKafkaCodec, kafka_codec

__all__ = ["KafkaCodec", "SharedKafkaCodec", "kafka_codec"]
