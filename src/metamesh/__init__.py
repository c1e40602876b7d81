"""metamesh: a service mesh for any layer-7 protocol.

The package is layered so imports only point down (see docs/architecture in the README):
``codecs`` (sans-IO framing and metadata) sits at the bottom; the proxy, runtime, xDS and control
plane build on it.
"""

__version__ = "0.1.0"
