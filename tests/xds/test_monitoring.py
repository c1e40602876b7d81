"""The monitoring port's handler: /ready follows the process's readiness, unknown paths are 404,
and the CA's counters render with every refusal reason present (zero until it happens)."""

from __future__ import annotations

import datetime as dt

from metamesh.security.ca import CertificateAuthority
from metamesh.security.cert_service import CertificateService, TokenBook
from metamesh.xds.monitoring import Monitored, handle


def test_ready_is_503_until_the_process_serves() -> None:
    serving = False
    parts = Monitored(ready=lambda: serving)
    assert handle(parts, "/ready") == (503, "text/plain", b"PRE_INITIALIZING\n")
    serving = True
    assert handle(parts, "/ready?x=1") == (200, "text/plain", b"LIVE\n")
    assert handle(parts, "/config_dump")[0] == 404


def test_ca_counters_render_issued_and_refused_by_reason() -> None:
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    service = CertificateService(ca, TokenBook({}))
    service.counts.update({"issued_token": 2, "issued_cert": 5, "bad_csr": 1})
    status, ctype, body = handle(Monitored(certificates=service), "/stats/prometheus")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert 'metamesh_ca_certificates_issued_total{auth="token"} 2.0' in text
    assert 'metamesh_ca_certificates_issued_total{auth="cert"} 5.0' in text
    assert 'metamesh_ca_requests_refused_total{reason="bad_csr"} 1.0' in text
    assert 'metamesh_ca_requests_refused_total{reason="unauthenticated"} 0.0' in text
