"""A Kubernetes API server stand-in for tests: the real wire protocol, an in-memory store.

No kube-apiserver can run on the project's machines (none in the package registries, no Go
toolchain, no container engine), and the maintained Python mocks looked at (kmock,
mockernetes) are either in-process patches of a client or, by their own documentation, a
"database over HTTP" without resource versions, watch resumption, bookmarks or 410 Gone. So
this module is a *test stand-in*, driven only through real clients (``kubernetes_asyncio``
and ``kubectl``), and strict about what they see:

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``
  (the legacy documents; kubectl falls back to them from aggregated discovery), with the
  built-in resources metamesh and its manifests use, plus every CRD applied;
- CRUD on ``/api/v1/...`` and ``/apis/<g>/<v>/...`` (namespaced and cluster-scoped),
  ``/status`` subresources, ``Status`` objects for errors (404 NotFound, 409 AlreadyExists /
  Conflict on a stale ``resourceVersion``, 410 Gone, 500), a missing namespace refused;
- PATCH: JSON merge patch, strategic merge patch (merge keys for the lists the manifests use:
  containers, ports, env, volumes, conditions; ``$patch: delete`` and ``$setElementOrder`` are
  understood) and server-side apply (``application/apply-patch+yaml``, simplified: the
  applied fields replace the object's, one field manager);
- one global ``resourceVersion`` counter; lists carry it; a watch
  (``?watch=1&resourceVersion=N``) replays the events after N from a bounded history, then
  streams new ones as chunked JSON lines, with ``BOOKMARK`` events when
  ``allowWatchBookmarks=true`` and the stream ending after ``timeoutSeconds``; a
  ``resourceVersion`` older than the history (after :meth:`KubeApiServer.compact`) is answered
  with an ``ERROR`` event carrying a 410 ``Expired`` Status, as the real watch cache does;
- CRDs (``apiextensions.k8s.io/v1``) become served resources when created, and their objects
  are checked against the CRD's ``openAPIV3Schema`` (types, nullability, enums, bounds; 422
  Invalid otherwise) with unknown fields pruned, or refused under ``fieldValidation=Strict``;
- a creation goes through the MutatingWebhookConfigurations that match it (rules,
  namespace and object selectors), each called over HTTPS at its ``clientConfig.url`` with the
  ``caBundle``, and the JSON Patch answered is applied (``failurePolicy`` honoured).

What a cluster's controllers would do is emulated in the smallest way the tests need: a Service
gets a ``clusterIP`` from ``service_cidr`` (loopback, so a proxy can listen on it); a Pod is
"running" at once with ``status.podIP`` from its annotation ``standin.metamesh.io/pod-ip``
(default 127.0.0.1) and Ready; each Service with a selector has EndpointSlices of its ready
Pods, one per distinct port mapping (a named ``targetPort`` is resolved per Pod), named
``<service>-<n>``, as the EndpointSlice controller makes them.

Faults, for the failure tests: :meth:`KubeApiServer.fail` (the next N requests answer a status,
e.g. 500), :meth:`cut_watches` (every open watch stream is cut in the middle of an object),
:meth:`stall` (requests hang, a timeout for the client), :meth:`compact` (history dropped:
410 on resume).

Run it in a thread with :class:`RunningApiServer` (``with RunningApiServer() as api:``), or as
``python -m tests.control.kube_apiserver PORT``.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import ipaddress
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

Obj = dict[str, Any]
POD_IP_ANNOTATION = "standin.metamesh.io/pod-ip"
HISTORY = 10_000


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status: bool = False  # has a /status subresource
    short_names: tuple[str, ...] = ()
    schema: Obj | None = None  # a CRD version's openAPIV3Schema
    verbs: tuple[str, ...] = (
        "create",
        "delete",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    )

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTINS = [
    ResourceType("", "v1", "namespaces", "Namespace", False, status=True),
    ResourceType("", "v1", "services", "Service", True, status=True),
    ResourceType("", "v1", "pods", "Pod", True, status=True),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("", "v1", "configmaps", "ConfigMap", True),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "events", "Event", True),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceType("events.k8s.io", "v1", "events", "Event", True),
    ResourceType("apps", "v1", "deployments", "Deployment", True, status=True),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        status=True,
        short_names=("crd", "crds"),
    ),
]

#: Strategic merge patch: the key that identifies the items of these lists.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "imagePullSecrets": "name",
}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_object(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Watcher:
    type: ResourceType
    namespace: str
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)


class KubeApiServer:
    """The stand-in (module docstring); every method runs on its own event loop."""

    def __init__(self, service_cidr: str = "127.250.0.0/16") -> None:
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in BUILTINS:
            self.types[(rt.group, rt.version, rt.plural)] = rt
        self.store: dict[str, dict[tuple[str, str], Obj]] = {}
        self.rv = 1
        self.history: list[tuple[int, str, str, Obj]] = []  # (rv, type key, event, object)
        self.oldest = 1  # the oldest resourceVersion a watch may resume from
        self.watchers: list[Watcher] = []
        self.requests: list[tuple[str, str]] = []  # (method, path_qs), for assertions
        self._failures: list[int] = []
        self._stalled = False
        self._cuts = 0
        self._ips = ipaddress.IPv4Network(service_cidr).hosts()
        self.bookmark_interval = 1.0
        self._strict = False  # the request being handled asked for fieldValidation=Strict
        self.forbidden: set[str] = set()  # resources (plural.group) answered 403, as RBAC would
        for ns in ("default", "kube-system", "metamesh-system"):
            self._put(self.types[("", "v1", "namespaces")], "", {"metadata": {"name": ns}})

    # --- faults ------------------------------------------------------------------------

    def fail(self, count: int, code: int = 500) -> None:
        self._failures.extend([code] * count)

    @property
    def pending_failures(self) -> int:
        return len(self._failures)

    def stall(self, on: bool) -> None:
        self._stalled = on

    def cut_watches(self) -> None:
        """Every open watch stream ends in the middle of its next object."""
        self._cuts += 1
        for w in self.watchers:
            w.queue.put_nowait(("\0cut", {}))

    def compact(self) -> None:
        """Forget the history: a watch resuming from before now gets 410 Gone."""
        self.history.clear()
        self.oldest = self.rv
        for w in self.watchers:  # as etcd compaction ends the cache's watches
            w.queue.put_nowait(("\0gone", {}))

    # --- the store ---------------------------------------------------------------------

    def _table(self, rt: ResourceType) -> dict[tuple[str, str], Obj]:
        return self.store.setdefault(rt.key, {})

    def _put(self, rt: ResourceType, namespace: str, obj: Obj, event: str = "ADDED") -> Obj:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)
        if rt.namespaced:
            meta["namespace"] = namespace
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        self._table(rt)[(namespace, meta["name"])] = obj
        self._record(rt, event, obj)
        return obj

    def _record(self, rt: ResourceType, event: str, obj: Obj) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self.rv, rt.key, event, snapshot))
        if len(self.history) > HISTORY:
            dropped = self.history.pop(0)
            self.oldest = dropped[0]
        for w in self.watchers:
            if w.type.key == rt.key and (
                not w.namespace or w.namespace == snapshot["metadata"].get("namespace")
            ):
                w.queue.put_nowait((event, snapshot))
        if rt.kind == "CustomResourceDefinition" and event != "DELETED":
            self._serve_crd(snapshot)
        if rt.kind in ("Pod", "Service") or (rt.kind == "Namespace" and event == "DELETED"):
            self._reconcile_slices()

    def _serve_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            has_status = "status" in (version.get("subresources") or {})
            rt = ResourceType(
                spec["group"],
                version["name"],
                names["plural"],
                names["kind"],
                spec.get("scope", "Namespaced") == "Namespaced",
                status=has_status,
                short_names=tuple(names.get("shortNames") or ()),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            )
            self.types[(rt.group, rt.version, rt.plural)] = rt

    # --- emulated controllers ------------------------------------------------------------

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        if rt.kind == "Service":
            spec = obj.setdefault("spec", {})
            if old is not None and (old.get("spec") or {}).get("clusterIP"):
                spec.setdefault("clusterIP", old["spec"]["clusterIP"])
            if not spec.get("clusterIP"):
                spec["clusterIP"] = str(next(self._ips))
            spec.setdefault("type", "ClusterIP")
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        elif rt.kind == "Pod":
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            ip = annotations.get(POD_IP_ANNOTATION, "127.0.0.1")
            obj["spec"] = obj.get("spec") or {}
            obj["spec"].setdefault("serviceAccountName", "default")
            status = obj.setdefault("status", {})
            status.update({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]})
            status.setdefault("conditions", [{"type": "Ready", "status": "True"}])

    def _reconcile_slices(self) -> None:
        slices_rt = self.types[("discovery.k8s.io", "v1", "endpointslices")]
        wanted: dict[tuple[str, str], Obj] = {}
        pods = self.store.get("pods", {})
        for (ns, name), svc in sorted(self.store.get("services", {}).items()):
            selector = (svc.get("spec") or {}).get("selector")
            if not selector:
                continue
            groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
            for (pns, _), pod in sorted(pods.items()):
                labels = (pod.get("metadata") or {}).get("labels") or {}
                if pns != ns or any(labels.get(k) != v for k, v in selector.items()):
                    continue
                ports = _slice_ports(svc, pod)
                if ports is None:
                    continue
                key = json.dumps(ports, sort_keys=True)
                groups.setdefault(key, (ports, []))[1].append(_slice_endpoint(pod))
            for index, (_, (ports, endpoints)) in enumerate(sorted(groups.items())):
                wanted[(ns, f"{name}-{index}")] = {
                    "metadata": {
                        "name": f"{name}-{index}",
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": "IPv4",
                    "ports": ports,
                    "endpoints": endpoints,
                }
        table = self._table(slices_rt)
        for where in sorted(set(table) - set(wanted)):
            gone = table.pop(where)
            self.rv += 1
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(slices_rt, "DELETED", gone)
        for where, obj in sorted(wanted.items()):
            old = table.get(where)
            if old is not None and _same_slice(old, obj):
                continue
            if old is not None:
                obj["metadata"]["uid"] = old["metadata"]["uid"]
            self._put(slices_rt, where[0], obj, "MODIFIED" if old is not None else "ADDED")

    # --- HTTP ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/api", self._core_versions)
        app.router.add_get("/api/v1", self._core_resources)
        app.router.add_get("/apis", self._groups)
        app.router.add_get("/apis/{group}", self._group)
        app.router.add_get("/apis/{group}/{version}", self._group_resources)
        app.router.add_route("*", "/api/v1/{rest:.*}", self._resource)
        app.router.add_route("*", "/apis/{group}/{version}/{rest:.*}", self._resource)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        while self._stalled:
            await asyncio.sleep(0.05)
        if request.transport is None or request.transport.is_closing():
            raise asyncio.CancelledError  # the client gave up while the server was silent
        if self._failures and request.path.startswith(("/api/", "/apis/")):
            code = self._failures.pop(0)
            return _json(status_object(code, "InternalError", "injected failure"), code)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return _json(status_object(exc.code, exc.reason, exc.message), exc.code)

    async def _version(self, request: web.Request) -> web.Response:
        return _json(
            {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-metamesh-standin",
                "platform": "linux/amd64",
            }
        )

    async def _core_versions(self, request: web.Request) -> web.Response:
        return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    async def _core_resources(self, request: web.Request) -> web.Response:
        return _json(self._resource_list("", "v1"))

    def _resource_list(self, group: str, version: str) -> Obj:
        resources = []
        for rt in self.types.values():
            if rt.group != group or rt.version != version:
                continue
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.kind.lower(),
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": list(rt.verbs),
                    "shortNames": list(rt.short_names),
                }
            )
            if rt.status:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            raise ApiError(404, "NotFound", f"the server could not find {group}/{version}")
        api_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": api_version,
            "resources": resources,
        }

    def _group_doc(self, group: str) -> Obj:
        versions = sorted(
            {rt.version for rt in self.types.values() if rt.group == group}, key=_version_priority
        )
        if not versions:
            raise ApiError(404, "NotFound", f"the server could not find group {group}")
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": listed,
            "preferredVersion": listed[0],
        }

    async def _groups(self, request: web.Request) -> web.Response:
        groups = sorted({rt.group for rt in self.types.values() if rt.group})
        return _json(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group_doc(g) for g in groups],
            }
        )

    async def _group(self, request: web.Request) -> web.Response:
        return _json(self._group_doc(request.match_info["group"]))

    async def _group_resources(self, request: web.Request) -> web.Response:
        info = request.match_info
        return _json(self._resource_list(info["group"], info["version"]))

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        group = request.match_info.get("group", "")
        version = request.match_info.get("version", "v1")
        parts = [p for p in request.match_info["rest"].split("/") if p]
        namespace = ""
        if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] != "status":
            namespace, parts = parts[1], parts[2:]
        rt = self.types.get((group, version, parts[0])) if parts else None
        if rt is not None and rt.key in self.forbidden:
            raise ApiError(403, "Forbidden", f'{rt.key} is forbidden: User "tester" cannot')
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = parts[1] if len(parts) > 1 else ""
        sub = parts[2] if len(parts) > 2 else ""
        if sub and not (sub == "status" and rt.status):
            raise ApiError(404, "NotFound", f"no subresource {sub}")
        if not rt.namespaced:
            namespace = ""
        method = request.method
        self._strict = request.query.get("fieldValidation") == "Strict"
        if method in ("POST", "PUT") and request.content_type != "application/json":
            raise ApiError(  # protobuf is the real server's other encoding: not spoken here
                415, "UnsupportedMediaType", f"the stand-in reads JSON, not {request.content_type}"
            )
        if not name:
            if method == "GET":
                if _go_bool(request.query.get("watch")):
                    return await self._watch(request, rt, namespace)
                return _json(self._list(rt, namespace, request.query.get("labelSelector", "")))
            if method == "POST":
                created = await self._admit_webhooks(rt, namespace, await request.json())
                return _json(self._create(rt, namespace, created), 201)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        if method == "GET":
            return _json(self._get(rt, namespace, name))
        if method == "PUT":
            return _json(self._replace(rt, namespace, name, await request.json(), sub))
        if method == "PATCH":
            body = await request.text()
            return _json(self._patch(rt, namespace, name, request.content_type, body, sub))
        if method == "DELETE":
            return _json(self._delete(rt, namespace, name))
        raise ApiError(405, "MethodNotAllowed", method)

    def _validate(self, rt: ResourceType, obj: Obj) -> None:
        """A custom resource against its CRD's schema, unknown fields pruned (or refused when
        the request asked for ``fieldValidation=Strict``), as the API server does."""
        if rt.schema is None:
            return
        errors: list[str] = []
        unknown: list[str] = []
        for key in ("spec", "status"):
            if key in obj:
                node = (rt.schema.get("properties") or {}).get(key) or {}
                obj[key] = check_schema(obj[key], node, key, errors, unknown)
        name = (obj.get("metadata") or {}).get("name")
        if unknown and self._strict:
            fields = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise ApiError(400, "BadRequest", f"strict decoding error: {fields}")
        if errors:
            raise ApiError(
                422, "Invalid", f'{rt.kind}.{rt.group} "{name}" is invalid: ' + "; ".join(errors)
            )

    # --- admission webhooks ----------------------------------------------------------------

    async def _admit_webhooks(self, rt: ResourceType, namespace: str, obj: Obj) -> Obj:
        """Call the MutatingWebhookConfigurations that match a CREATE, as the API server does
        (webhooks with a ``clientConfig.url`` only; ``failurePolicy`` honoured)."""
        configs = self.store.get("mutatingwebhookconfigurations.admissionregistration.k8s.io", {})
        ns = self.store.get("namespaces", {}).get(("", namespace), {})
        ns_labels = (ns.get("metadata") or {}).get("labels") or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for _, config in sorted(configs.items()):
            for hook in config.get("webhooks") or []:
                if not _hook_matches(hook, rt, ns_labels, labels):
                    continue
                try:
                    obj = await _call_webhook(hook, rt, namespace, obj)
                except (OSError, ValueError, KeyError, TimeoutError) as exc:
                    if hook.get("failurePolicy", "Fail") == "Fail":
                        raise ApiError(
                            500, "InternalError", f'failed calling webhook "{hook["name"]}": {exc}'
                        ) from exc
        return obj

    # --- verbs -------------------------------------------------------------------------------

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if rt.namespaced and ("", namespace) not in self.store.get("namespaces", {}):
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')

    def _list(self, rt: ResourceType, namespace: str, selector: str) -> Obj:
        wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
        items = []
        for (ns, _), obj in sorted(self._table(rt).items()):
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if namespace and ns != namespace:
                continue
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            items.append(obj)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    def _get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._table(rt).get((namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.key} "{name}" not found')
        return obj

    def _create(self, rt: ResourceType, namespace: str, obj: Obj) -> Obj:
        self._check_namespace(rt, namespace)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if (namespace, name) in self._table(rt):
            raise ApiError(409, "AlreadyExists", f'{rt.key} "{name}" already exists')
        for key in ("resourceVersion", "uid", "creationTimestamp"):
            meta.pop(key, None)
        if rt.status and rt.kind not in ("Pod", "Namespace"):
            obj.pop("status", None)
        self._validate(rt, obj)
        self._admit(rt, obj, None)
        return self._put(rt, namespace, obj)

    def _replace(self, rt: ResourceType, namespace: str, name: str, obj: Obj, sub: str) -> Obj:
        old = self._get(rt, namespace, name)
        given = (obj.get("metadata") or {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.key} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        return self._store_update(rt, namespace, old, obj, sub)

    def _store_update(self, rt: ResourceType, namespace: str, old: Obj, new: Obj, sub: str) -> Obj:
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        meta["name"] = old["metadata"]["name"]
        meta["uid"] = old["metadata"]["uid"]
        meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        generation = old["metadata"].get("generation", 1)
        if sub == "status":  # only the status changes
            kept = copy.deepcopy(old)
            kept["status"] = new.get("status")
            new, meta = kept, kept["metadata"]
        elif rt.status and "status" in old:
            new["status"] = old["status"]
        self._validate(rt, new)
        if sub != "status" and new.get("spec") != old.get("spec"):
            generation += 1
        meta["generation"] = generation
        self._admit(rt, new, old)
        return self._put(rt, namespace, new, "MODIFIED")

    def _patch(
        self, rt: ResourceType, namespace: str, name: str, content_type: str, body: str, sub: str
    ) -> Obj:
        try:
            old = self._get(rt, namespace, name)
        except ApiError:
            if content_type != "application/apply-patch+yaml":
                raise
            applied = yaml.safe_load(body)
            return self._create(rt, namespace, applied)
        base = copy.deepcopy(old)
        if content_type == "application/merge-patch+json":
            merged = merge_patch(base, json.loads(body))
        elif content_type == "application/strategic-merge-patch+json":
            merged = strategic_merge(base, json.loads(body))
        elif content_type == "application/apply-patch+yaml":
            applied = yaml.safe_load(body)
            merged = base | {k: v for k, v in applied.items() if k != "metadata"}
            meta = base["metadata"]
            for key in ("labels", "annotations"):
                if key in applied.get("metadata", {}):
                    meta[key] = applied["metadata"][key]
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
        return self._store_update(rt, namespace, old, merged, sub)

    def _delete(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._table(rt).pop((namespace, name), None)
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.key} "{name}" not found')
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(rt, "DELETED", obj)
        return obj

    # --- watch -------------------------------------------------------------------------------

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str
    ) -> web.StreamResponse:
        query = request.query
        since = int(query.get("resourceVersion") or 0)
        bookmarks = _go_bool(query.get("allowWatchBookmarks"))
        timeout = float(query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since and since < self.oldest:
            gone = status_object(
                410, "Expired", f"too old resource version: {since} ({self.oldest})"
            )
            await _send(response, {"type": "ERROR", "object": gone})
            return response
        watcher = Watcher(rt, namespace)
        replay = [
            (event, obj)
            for rv, key, event, obj in self.history
            if key == rt.key
            and rv > since
            and (not namespace or obj["metadata"].get("namespace") == namespace)
        ]
        if not since:  # "any": a synthetic ADDED for everything there now
            replay = [("ADDED", copy.deepcopy(o)) for o in self._list(rt, namespace, "")["items"]]
        self.watchers.append(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for event, obj in replay:
                await _send(response, {"type": event, "object": obj})
            async for item in _events(
                watcher, deadline, self.bookmark_interval if bookmarks else None
            ):
                if item is None:
                    mark = {
                        "kind": rt.kind,
                        "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(self.rv)},
                    }
                    await _send(response, {"type": "BOOKMARK", "object": mark})
                    continue
                event, obj = item
                if event == "\0cut":
                    await response.write(b'{"type":"MODIFIED","object":{"kind":"')
                    break
                if event == "\0gone":
                    gone = status_object(410, "Expired", "too old resource version")
                    await _send(response, {"type": "ERROR", "object": gone})
                    break
                await _send(response, {"type": event, "object": obj})
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(watcher)
        if request.transport is not None and not request.transport.is_closing():
            with _suppress():
                await response.write_eof()
        return response


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


async def _events(
    watcher: Watcher, deadline: float, bookmark: float | None
) -> AsyncIterator[tuple[str, Obj] | None]:
    loop = asyncio.get_running_loop()
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return
        wait = min(left, bookmark) if bookmark else left
        try:
            item = await asyncio.wait_for(watcher.queue.get(), wait)
        except TimeoutError:
            if bookmark and loop.time() < deadline:
                yield None
            continue
        if item is None:
            return
        yield item


async def _send(response: web.StreamResponse, event: Obj) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def _go_bool(value: str | None) -> bool:
    """A query boolean as the API server parses it (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' order: GA before beta before alpha, higher numbers first."""
    import re

    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if match is None:
        return (3, 0, 0)
    level = {"None": 0, "beta": 1, "alpha": 2}[str(match.group(2))]
    return (level, -int(match.group(1)), -int(match.group(3) or 0))


def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (
            op == "NotIn" and key in labels and labels[key] in values
        ):
            return False
        if (op == "Exists") != (key in labels) and op in ("Exists", "DoesNotExist"):
            return False
    return True


def _hook_matches(
    hook: Obj, rt: ResourceType, ns_labels: dict[str, str], labels: dict[str, str]
) -> bool:
    rules = hook.get("rules") or []
    matched = any(
        rt.group in r.get("apiGroups", []) and rt.plural in r.get("resources", [])
        and ("CREATE" in r.get("operations", []) or "*" in r.get("operations", []))
        for r in rules
    )  # fmt: skip
    return (
        matched
        and _selects(hook.get("namespaceSelector"), ns_labels)
        and _selects(hook.get("objectSelector"), labels)
    )


async def _call_webhook(hook: Obj, rt: ResourceType, namespace: str, obj: Obj) -> Obj:
    import base64
    import ssl

    import aiohttp

    config = hook["clientConfig"]
    url = config["url"]  # service references need cluster DNS: not emulated
    context = ssl.create_default_context()
    if config.get("caBundle"):
        context.load_verify_locations(cadata=base64.b64decode(config["caBundle"]).decode())
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "resource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
        "namespace": namespace,
        "operation": "CREATE",
        "object": obj,
    }
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    timeout = aiohttp.ClientTimeout(total=float(hook.get("timeoutSeconds") or 10))
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=review, ssl=context) as response,
    ):
        if response.status != 200:
            raise ValueError(f"webhook answered HTTP {response.status}")
        answer = (await response.json())["response"]
    if answer.get("uid") != request["uid"]:
        raise ValueError("the webhook answered another request's uid")
    if not answer.get("allowed", False):
        raise ApiError(400, "BadRequest", f"admission webhook denied: {answer.get('status')}")
    if answer.get("patchType") == "JSONPatch":
        obj = json_patch(obj, json.loads(base64.b64decode(answer["patch"])))
    return obj


def json_patch(obj: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 add/replace/remove (what webhooks send)."""
    doc = copy.deepcopy(obj)
    for op in ops:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        parent: Any = doc
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ValueError(f"unsupported JSON Patch op {op['op']!r}")
    return doc


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_schema(value: Any, schema: Obj, path: str, errors: list[str], unknown: list[str]) -> Any:
    """``value`` checked against a structural OpenAPI v3 schema node (the keywords metamesh's
    CRDs use); returns it with unknown fields pruned (their paths in ``unknown``)."""
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: Invalid value: null: {path} in body must not be null")
        return value
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            errors.append(f"{path}: Invalid value: {value!r}: must be an integer or a string")
        return value
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, _TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            shown = json.dumps(value)[:40]
            errors.append(f"{path}: Invalid value: {shown}: {path} in body must be of type {kind}")
            return value
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append(
            f"{path}: Unsupported value: {json.dumps(value)}: supported values: {allowed}"
        )
    if isinstance(value, int | float):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            errors.append(f"{path}: Invalid value: {value}: {path} in body is out of range")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        errors.append(f"{path}: Invalid value: {json.dumps(value)}: too short")
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [
            check_schema(v, items, f"{path}[{i}]", errors, unknown) for i, v in enumerate(value)
        ]
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}"
            if props is not None and key in props:
                out[key] = check_schema(item, props[key], where, errors, unknown)
            elif isinstance(extra, dict):
                out[key] = check_schema(item, extra, where, errors, unknown)
            else:
                unknown.append(where)  # pruned, as the API server prunes
        return out
    return value


def _json(obj: Obj, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj), status=status, content_type="application/json")


def _slice_ports(svc: Obj, pod: Obj) -> list[Obj] | None:
    """The Service's ports resolved for ``pod`` (a named targetPort from its containers)."""
    named = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name"):
                named[port["name"]] = port.get("containerPort")
    out = []
    for port in (svc.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        number = named.get(target) if isinstance(target, str) else target
        if number is None:
            continue
        out.append({"name": port.get("name", ""), "port": number, "protocol": "TCP"})
    return out or None


def _slice_endpoint(pod: Obj) -> Obj:
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    meta = pod["metadata"]
    return {
        "addresses": [status.get("podIP", "127.0.0.1")],
        "conditions": {"ready": ready},
        "targetRef": {
            "kind": "Pod",
            "namespace": meta.get("namespace"),
            "name": meta["name"],
            "uid": meta.get("uid"),
        },
    }


def _same_slice(old: Obj, new: Obj) -> bool:
    def strip(eps: list[Obj]) -> list[Obj]:
        return [{**e, "targetRef": {**e["targetRef"], "uid": None}} for e in eps]

    return old.get("ports") == new.get("ports") and strip(old.get("endpoints") or []) == strip(
        new.get("endpoints") or []
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, key: str = "") -> Any:
    """Kubernetes' strategic merge patch, for the lists in :data:`MERGE_KEYS` (module doc)."""
    if isinstance(patch, list) and isinstance(target, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        items = [copy.deepcopy(i) for i in target]
        for change in patch:
            if not isinstance(change, dict):
                continue
            at = next(
                (i for i, x in enumerate(items) if x.get(merge_key) == change.get(merge_key)), None
            )
            if change.get("$patch") == "delete":
                if at is not None:
                    items.pop(at)
            elif at is None:
                items.append(strategic_merge({}, change))
            else:
                items[at] = strategic_merge(items[at], change)
        return items
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if name.startswith("$setElementOrder/") or name in ("$patch", "$retainKeys"):
            continue
        if name.startswith("$deleteFromPrimitiveList/"):
            field_name = name.split("/", 1)[1]
            result[field_name] = [v for v in result.get(field_name, []) if v not in value]
            continue
        if value is None:
            result.pop(name, None)
        else:
            result[name] = strategic_merge(result.get(name), value, name)
    return result


class RunningApiServer:
    """The stand-in on 127.0.0.1 in a thread of its own: ``url``, ``kubeconfig(path)``, and
    ``call(fn, *args)`` to run a method on its loop (faults, direct reads)."""

    def __init__(self, port: int = 0, service_cidr: str = "127.250.0.0/16") -> None:
        self.port = port
        self.server: KubeApiServer | None = None
        self._service_cidr = service_cidr
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> RunningApiServer:
        self._thread.start()
        self.call_async(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self.server = KubeApiServer(self._service_cidr)
        self._runner = web.AppRunner(self.server.app(), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stop listening (the store is kept): clients see connection refused."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            for w in list(self.server.watchers if self.server else []):
                w.queue.put_nowait(None)
            self.call_async(runner.cleanup())

    def restart(self) -> None:
        """Listen again on the same port, with the same store."""

        async def start() -> None:
            assert self.server is not None
            self._runner = web.AppRunner(self.server.app(), shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

        self.call_async(start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "tester"}}],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self.call_async(run())

    def call_async(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)


def main() -> None:  # pragma: no cover - manual use
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 6443
    web.run_app(KubeApiServer().app(), host="127.0.0.1", port=port)


if __name__ == "__main__":  # pragma: no cover
    main()
