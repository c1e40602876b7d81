"""Optional native build of metamesh's data-plane hot path with mypyc.

metamesh is pure Python and installs as such by default. With ``METAMESH_MYPYC=1`` in the
environment, ``pip install --no-build-isolation .`` (with mypy, setuptools and wheel installed;
``scripts/build_mypyc.sh`` does this into ``build/native``) compiles the modules every proxied
request runs through -- the codecs' framing, the proxy core and the runtime's socket adapters
and per-turn flush -- to C extensions with mypyc, the
compiler that ships with mypy. The code is the same, fully typed Python: mypyc turns attribute
access on native classes into struct loads, calls between compiled functions into C calls and
``Final`` constants into C constants, which takes about 60% off the core's CPU time per request
(see benchmarks/README.md).

Everything else (config loading, admin, xDS, control plane) stays interpreted: it is not on the
hot path and leans on pydantic and asyncio, where compiling buys nothing. Classes that
applications extend (codecs, filters, load balancers) are marked
``@mypyc_attr(allow_interpreted_subclasses=True)`` so plain-Python codecs and filters still
subclass them.
"""

from __future__ import annotations

import os

from setuptools import setup

#: Modules compiled by the native build, relative to ``src/metamesh``. Only modules on the
#: per-request path belong here; ``tests/test_native_build.py`` checks each still compiles.
HOT_PATH_MODULES = [
    "codecs/message",
    "codecs/base",
    "codecs/thrift/codec",
    "codecs/thrift/header",
    "codecs/thrift/protocol",
    "codecs/thrift/transport",
    "codecs/dubbo/codec",
    "codecs/dubbo/body",
    "codecs/dubbo/header",
    "codecs/dubbo/metadata",
    "proxy/connection",
    "proxy/core",
    "proxy/downstream",
    "proxy/request_path",
    "proxy/attempts",
    "proxy/pool",
    "proxy/replies",
    "proxy/router",
    "proxy/lb",
    "proxy/stats",
    "proxy/upstream",
    "proxy/policy",
    "proxy/mirror",
    "proxy/config",
    "proxy/listener",
    "proxy/codec_ref",
    "proxy/filters/base",
    "proxy/filters/chain",
    "proxy/filters/builtins",
    "proxy/filters/fault",
    "proxy/filters/local_ratelimit",
    "proxy/filters/ratelimit",
    "proxy/filters/rbac",
    "runtime/protocols",
]


def _ext_modules() -> list[object]:
    if os.environ.get("METAMESH_MYPYC", "0") != "1":
        return []
    from mypyc.build import mypycify  # only needed for the native build

    paths = [f"src/metamesh/{m}.py" for m in HOT_PATH_MODULES]
    return list(mypycify(paths, opt_level="3", debug_level="0"))


setup(ext_modules=_ext_modules())
