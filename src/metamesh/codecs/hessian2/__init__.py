"""Hessian 2.0 serialization, faithful to Java (Caucho ``Hessian2Input``/``Hessian2Output``).

Dubbo bodies are Hessian 2.0, and no Python library reads and writes it faithfully, so metamesh
has its own: a table-driven decoder (:mod:`.decoder`), an encoder that makes Java's choices of
form (:mod:`.encoder`), Java string semantics (:mod:`.javastr`) and a value model (:mod:`.model`).
The proxy mostly calls :meth:`Hessian2Decoder.read_string` and :meth:`Hessian2Decoder.skip` on
each request, so those paths are kept lean.

Value model (Java -> Python on decode; the encoder takes the same and writes it back):

============================  =================================================================
Java / Hessian                Python
============================  =================================================================
null, boolean                 ``None``, ``bool``
int (any int form)            ``int``; the encoder writes a plain ``int`` as a Java int when it
                              fits 32 bits, else as a long
long (any long form)          :class:`Long` (an ``int`` subclass), so it re-encodes as a long
double (all forms)            ``float``; Java's ``short``/``float`` are written by Caucho as
                              ``ShortHandle``/``FloatHandle`` objects and decode as such
String                        ``str``; lengths count UTF-16 code units, non-BMP characters travel
                              as two 3-byte surrogates (chunks may split them: they are joined);
                              lone surrogates survive as lone surrogate code points (so a
                              Python str holding a valid pair as two code points decodes back
                              as the one character: they are the same Java string)
byte[]                        ``bytes`` (``bytearray``/``memoryview`` also encode)
java.util.Date                ``datetime`` in UTC (a naive one encodes as UTC; ``date`` as
                              midnight UTC); dates outside Python's years 1-9999 raise
untyped list ('X','W',0x78+)  ``list`` (``tuple`` also encodes); written fixed-length
typed list / array            :class:`TypedList` ``(type, items)``, e.g. ``TypedList("[int", ...)``
untyped map ('H')             ``dict``
typed map ('M')               :class:`TypedMap` ``(type, entries)``, e.g. ``java.util.TreeMap``
object ('C' + 'O'/0x60+)      :class:`JavaObject` ``(class_name, fields)``, field order kept
enum constant                 ``JavaObject(enum_class, {"name": "CONSTANT"})``
back-reference (0x51)         the *same* Python object (identity), cycles included
============================  =================================================================

A map whose key decodes to an unhashable value (a list, map or object) cannot be a ``dict`` and
raises :class:`HessianError`. All malformed or truncated input raises :class:`HessianError`
(a :class:`~metamesh.codecs.CodecError`) naming the offset; nothing else escapes.
"""

from typing import Any

from metamesh.codecs.hessian2.decoder import Hessian2Decoder
from metamesh.codecs.hessian2.encoder import Hessian2Encoder
from metamesh.codecs.hessian2.model import HessianError, JavaObject, Long, TypedList, TypedMap


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode the one Hessian 2.0 value that fills ``data`` exactly."""
    decoder = Hessian2Decoder(data)
    value = decoder.read()
    if not decoder.at_end():
        raise HessianError(f"trailing bytes after the value, from offset {decoder.offset}")
    return value


def dumps(value: Any) -> bytes:
    """Encode one value as Hessian 2.0."""
    encoder = Hessian2Encoder()
    encoder.write(value)
    return encoder.getvalue()


__all__ = [
    "Hessian2Decoder",
    "Hessian2Encoder",
    "HessianError",
    "JavaObject",
    "Long",
    "TypedList",
    "TypedMap",
    "dumps",
    "loads",
]
