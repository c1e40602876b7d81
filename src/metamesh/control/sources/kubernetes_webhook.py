"""The sidecar injector: a mutating admission webhook served by the control plane.

The API server sends each Pod creation in a namespace labelled ``metamesh-injection: enabled``
(the MutatingWebhookConfiguration of ``deploy/control-plane.yaml``) to ``POST /inject`` as an
``admission.k8s.io/v1`` AdmissionReview; :func:`review` answers with a JSON Patch (RFC 6902)
that adds, as Istio's injector does:

- the init container ``metamesh-init`` (``metamesh intercept``: the interception rules are in
  place before the application starts) and the ``metamesh-proxy`` container
  (:func:`~.kubernetes_manifests.sidecar_containers`);
- the label ``security.istio.io/tlsMode: istio`` (the control plane then uses the Pod's service
  account as its identity and mutual TLS towards it, :mod:`.kubernetes_objects`) and the
  annotation ``sidecar.metamesh.io/status: injected``.

A Pod annotated ``sidecar.metamesh.io/inject: "false"``, or already injected, is allowed
unchanged. A request that is not an AdmissionReview gets 400; the webhook never refuses a Pod
(``failurePolicy: Ignore`` in the configuration too), so the injector being down never blocks
workloads, it only leaves them without a sidecar.

:class:`InjectorServer` serves it over HTTPS (aiohttp; the API server only calls webhooks over
TLS) with the certificate and key given (``--webhook-cert``/``--webhook-key``), on the control
plane's loop.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from metamesh.control.sources.kubernetes_manifests import sidecar_containers
from metamesh.control.sources.kubernetes_objects import TLS_MODE_LABEL

log = logging.getLogger("metamesh.control.sources.kubernetes")

Obj = dict[str, Any]
STATUS_ANNOTATION = "sidecar.metamesh.io/status"
INJECT_ANNOTATION = "sidecar.metamesh.io/inject"


@dataclass(frozen=True, slots=True)
class InjectorSettings:
    """``--webhook-port 15017 --webhook-cert F --webhook-key F --sidecar-image I``."""

    cert: str
    key: str
    port: int = 15017
    host: str = "0.0.0.0"  # the API server calls it from outside the pod
    image: str = "metamesh:latest"
    xds: str = "metamesh-control-plane.metamesh-system.svc:15010"


def _escape(key: str) -> str:
    """A JSON Pointer token (RFC 6901): ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def patch_for(pod: Obj, settings: InjectorSettings) -> list[Obj]:
    """The JSON Patch that adds the sidecar to ``pod`` ([] when it must not be injected)."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in spec.get("containers") or []}
    if annotations.get(INJECT_ANNOTATION) == "false" or STATUS_ANNOTATION in annotations:
        return []
    if "metamesh-proxy" in names:
        return []
    init, proxy = sidecar_containers(settings.image, settings.xds)
    ops: list[Obj] = []
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers/-", "value": init})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [init]})
    ops.append({"op": "add", "path": "/spec/containers/-", "value": proxy})
    for field, key, value in (
        ("labels", TLS_MODE_LABEL, "istio"),
        ("annotations", STATUS_ANNOTATION, "injected"),
    ):
        if meta.get(field):
            ops.append({"op": "add", "path": f"/metadata/{field}/{_escape(key)}", "value": value})
        else:
            ops.append({"op": "add", "path": f"/metadata/{field}", "value": {key: value}})
    return ops


def review(body: Obj, settings: InjectorSettings) -> Obj:
    """The AdmissionReview answer to ``body`` (ValueError if it is not an AdmissionReview)."""
    request = body.get("request") if isinstance(body, dict) else None
    if body.get("kind") != "AdmissionReview" or not isinstance(request, dict):
        raise ValueError("not an admission.k8s.io/v1 AdmissionReview")
    response: Obj = {"uid": request.get("uid", ""), "allowed": True}
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if kind == "Pod" and request.get("operation", "CREATE") == "CREATE" and isinstance(pod, dict):
        ops = patch_for(pod, settings)
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class InjectorServer:
    """``POST /inject`` over HTTPS (module docstring); ``port`` is the bound one after start."""

    def __init__(self, settings: InjectorSettings) -> None:
        self.settings = settings
        self.port = settings.port
        self.injected = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.cert, self.settings.key)
        app = web.Application()
        app.router.add_post("/inject", self._inject)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, ssl_context=context
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("sidecar injector on https://%s:%d/inject", self.settings.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _inject(self, request: web.Request) -> web.Response:
        try:
            answer = review(await request.json(), self.settings)
        except (ValueError, AttributeError) as exc:
            log.warning("sidecar injector: bad request from %s: %s", request.remote, exc)
            return web.json_response({"error": str(exc)}, status=400)
        if "patch" in answer["response"]:
            self.injected += 1
        return web.json_response(answer)
