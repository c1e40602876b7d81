"""The sidecar injector, called by the API server stand-in over HTTPS on a kubectl Pod create.

The control plane's Kubernetes source serves the webhook (certificate made here with
``cryptography``); the MutatingWebhookConfiguration is deploy/control-plane.yaml's, with a
``url`` instead of the in-cluster Service (the stand-in has no cluster DNS) and the test CA as
``caBundle``. The stand-in calls it for a Pod applied with kubectl, as a real API server would,
and applies the JSON Patch it answers.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from metamesh.control.sources.kubernetes import KubernetesSettings, KubernetesSource
from metamesh.control.sources.kubernetes_manifests import documents
from metamesh.control.sources.kubernetes_webhook import InjectorSettings, review
from tests.control.kube_apiserver import RunningApiServer
from tests.control.test_kubernetes_source import Cluster


def certificate(tmp: Path) -> tuple[str, str, str]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file, PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metamesh-webhook")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (tmp / "tls.crt").write_text(pem)
    (tmp / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(tmp / "tls.crt"), str(tmp / "tls.key"), pem


def webhook_config(port: int, ca: str) -> dict[str, Any]:
    config = next(
        d for d in documents("control-plane") if d["kind"] == "MutatingWebhookConfiguration"
    )
    hook = config["webhooks"][0]
    hook["clientConfig"] = {
        "url": f"https://127.0.0.1:{port}/inject",
        "caBundle": base64.b64encode(ca.encode()).decode(),
    }
    return config


POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: calc, version: v1}}
  annotations: {annotations}
spec:
  containers:
  - {{name: app, image: calc:latest}}
"""


def test_a_pod_created_with_kubectl_gets_the_sidecar(tmp_path: Path) -> None:
    cert, key, ca = certificate(tmp_path)

    async def main() -> None:
        with RunningApiServer() as api:
            cluster = Cluster(api, tmp_path)
            injector = InjectorSettings(cert=cert, key=key, port=0, host="127.0.0.1")
            settings = KubernetesSettings(
                kubeconfig=str(cluster.kubeconfig), injector=injector, write_status=False
            )
            source = KubernetesSource(settings, lambda sets: None)
            await source.start()
            try:
                assert source.injector is not None
                config = webhook_config(source.injector.port, ca)
                await cluster.apply(json.dumps(config))
                await cluster.apply(POD.format(name="before", annotations="{}"))
                await cluster.kubectl("label", "namespace", "default", "metamesh-injection=enabled")
                await cluster.apply(POD.format(name="calc", annotations="{}"))
                off = "{sidecar.metamesh.io/inject: 'false'}"
                await cluster.apply(POD.format(name="opted-out", annotations=off))
                pods = {
                    p["metadata"]["name"]: p
                    for p in json.loads(await cluster.kubectl("get", "pods", "-o", "json"))["items"]
                }
            finally:
                await source.close()
        injected = pods["calc"]
        assert [c["name"] for c in injected["spec"]["initContainers"]] == ["metamesh-init"]
        assert [c["name"] for c in injected["spec"]["containers"]] == ["app", "metamesh-proxy"]
        assert injected["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
        assert injected["metadata"]["labels"]["version"] == "v1"
        assert injected["metadata"]["annotations"]["sidecar.metamesh.io/status"] == "injected"
        proxy = injected["spec"]["containers"][1]
        assert proxy["args"][:3] == ["proxy", "--xds", injector.xds]
        for untouched in ("before", "opted-out"):  # namespace not labelled yet; opted out
            assert [c["name"] for c in pods[untouched]["spec"]["containers"]] == ["app"]
            assert "initContainers" not in pods[untouched]["spec"]
        assert source.injector.injected == 1

    asyncio.run(main())


def test_a_request_that_is_not_an_admission_review_is_refused() -> None:
    settings = InjectorSettings(cert="", key="")
    for body in ({"kind": "Pod"}, {"kind": "AdmissionReview"}):
        try:
            review(body, settings)
        except ValueError as exc:
            assert "AdmissionReview" in str(exc)
        else:
            raise AssertionError(f"{body} accepted")
    done = review(
        {"kind": "AdmissionReview", "request": {"uid": "u1", "kind": {"kind": "Service"}}},
        settings,
    )
    assert done["response"] == {"uid": "u1", "allowed": True}
