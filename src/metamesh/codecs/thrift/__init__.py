"""Thrift codec: framed, unframed and THeader transports x binary (strict and non-strict) and
compact protocols, detected per connection. See :mod:`.codec` for the metadata it exposes.

Split as Envoy's thrift_proxy is: :mod:`.transport` (framing and detection), :mod:`.header`
(THeader), :mod:`.protocol` (message headers, skip-walk, TApplicationException) and
:mod:`.codec` (the :class:`ThriftCodec` tying them to the codec contract).
"""

from metamesh.codecs.thrift.codec import FrameState, ThriftCodec
from metamesh.codecs.thrift.protocol import Protocol
from metamesh.codecs.thrift.transport import Transport

__all__ = ["FrameState", "Protocol", "ThriftCodec", "Transport"]
