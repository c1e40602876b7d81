"""Dubbo 2 codec (magic 0xdabb, Hessian2 bodies): framing, lazy metadata, attachment mutation."""

from metamesh.codecs.dubbo.codec import ERROR_STATUS, DubboCodec
from metamesh.codecs.dubbo.header import DubboStatus

__all__ = ["ERROR_STATUS", "DubboCodec", "DubboStatus"]
