"""What a TLS read costs when nothing is left to decrypt: raising ``SSLWantReadError`` (what
uvloop's TLS does on every read) against checking the BIO and the TLS object for pending bytes
(what ``runtime/tls_protocols.py`` does); one 200-byte record written and read back (what each
hop pays per message: one encryption, one decryption), read into a fresh 64 KiB ``bytes`` and
into a preallocated buffer; and one 200-byte request/reply round trip over two connected
``ssl.SSLObject`` s (two encryptions, two decryptions), for scale.

No sockets, no event loop: two memory-BIO TLS objects of this Python's OpenSSL, handshaken in
process with an ECDSA P-256 certificate of a throwaway mesh CA.

Run: ``.venv/bin/python -m benchmarks.tls_reads`` (prints ns per operation, best of 5).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import timeit

from metamesh.runtime.tls import TlsCredentials
from metamesh.security.ca import CertificateAuthority
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId

N = 100_000


def _credentials(ca: CertificateAuthority, account: str) -> TlsCredentials:
    who = SpiffeId("cluster.local", "default", account)
    pair = new_key_and_csr(who)
    chain = ca.sign(pair.csr_pem, who, dt.datetime.now(dt.UTC))
    return TlsCredentials(
        "".join(chain[:-1]).encode(), pair.key_pem, ca.root_pem.encode(), "cluster.local"
    )


def main() -> None:
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    server, client = _credentials(ca, "server"), _credentials(ca, "client")
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.client_context.wrap_bio(c_in, c_out)
    s = server.context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # the handshake, by hand
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())

    def raising() -> None:
        try:  # noqa: SIM105 - the measured path: suppress() would add a context manager
            c.read(65536)
        except ssl.SSLWantReadError:
            pass

    def checking() -> None:
        if c_in.pending or c.pending():
            c.read(65536)

    msg = b"x" * 200

    def round_trip() -> None:
        c.write(msg)
        s_in.write(c_out.read())
        s.read(65536)
        s.write(msg)
        c_in.write(s_out.read())
        c.read(65536)

    def one_record() -> None:
        c.write(msg)
        s_in.write(c_out.read())
        s.read(65536)

    buffer = bytearray(65536)

    def one_record_into_buffer() -> None:
        c.write(msg)
        s_in.write(c_out.read())
        s.read(65536, buffer)

    for name, fn in (
        ("read raising SSLWantReadError", raising),
        ("pending check instead", checking),
        ("200 B record written and read back (1 enc + 1 dec)", one_record),
        ("the same, read into a preallocated buffer", one_record_into_buffer),
        ("200 B request + reply (2 enc + 2 dec)", round_trip),
    ):
        ns = min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e9
        print(f"{name}: {ns:,.0f} ns")


if __name__ == "__main__":
    main()
