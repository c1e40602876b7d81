"""Kubernetes objects -> metamesh resources, one pseudo-file per object (pure, no I/O).

The Kubernetes source (:mod:`.kubernetes`) keeps the objects it watches as plain JSON dicts,
exactly as the API server sent them, in a :class:`KubeObjects` store keyed by
``(resource, namespace, name)``. This module turns the store into ``{pseudo-file:
ResourceSet}``, the shape the merge step (:mod:`.merge`) puts beside the directory's files:

- **custom resources** of the kinds metamesh reads (the Aeraki and Istio CRDs: MetaRouter,
  ApplicationProtocol, ServiceEntry, DestinationRule, ...): each object is loaded by the same
  loader as a YAML file (it is JSON, which YAML reads), so it is validated the same way and a
  problem names it: ``kubernetes://metaprotocol.aeraki.io/metarouters/default/demo``;
- **core Services** with at least one port named for an Aeraki protocol
  (``tcp-metaprotocol-<app>-*``, ``tcp-dubbo-*``, ``tcp-redis-*``, ...): each is a ServiceEntry
  (built here, as Aeraki's service controller does) in the pseudo-file
  ``kubernetes://v1/services/<ns>/<name>``:

  ======================  ===============================================================
  host                    ``<name>.<namespace>.svc.cluster.local``
  addresses               the Service's ``clusterIP`` (none for a headless Service: one is
                          allocated as for any ServiceEntry without addresses)
  ports                   the Service's ports, same numbers and names (the name selects the
                          codec); ``targetPort`` when it is a number
  endpoints               every address of the Service's EndpointSlices
                          (``kubernetes.io/service-name``) whose ``ready`` condition is not
                          false, on the slice's ports; labels: the labels of the Pod named by
                          the endpoint's ``targetRef`` (so DestinationRule subsets such as
                          ``version: v1`` select Pods), ``serviceAccount``: the Pod's
                          ``spec.serviceAccountName`` (its identity for mTLS) when the Pod
                          has a sidecar (label ``security.istio.io/tlsMode: istio``, set by
                          the injector as Istio's does; without one, auto mTLS to it would
                          fail)
  resolution              STATIC with endpoints, NONE without (a Service whose Pods are all
                          gone keeps its routes and answers "no healthy upstream")
  ======================  ===============================================================

A namespace labelled ``metamesh.io/discovery: disabled`` is left out entirely (like Istio's
discovery selectors), so a team can keep its objects out of the mesh.

The translation of one object is cached on what metamesh reads of it, so an unchanged object
gives the very same ResourceSet (the acceptance step compares sets by identity, and a model is
rebuilt only when something in force changed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metamesh.api.base import CLUSTER_DOMAIN
from metamesh.api.loader import KINDS, ResourceSet, load_text
from metamesh.api.protocol import KNOWN_PROTOCOLS
from metamesh.control.sources.kubernetes_vips import with_persisted_address

Obj = dict[str, Any]
#: ``(group, version, plural)``; the core group is ``""``.
Gvr = tuple[str, str, str]
Key = tuple[str, str, str]  # (resource, namespace, name); resource "plural.group" or "plural"

SERVICES: Gvr = ("", "v1", "services")
PODS: Gvr = ("", "v1", "pods")
NAMESPACES: Gvr = ("", "v1", "namespaces")
ENDPOINT_SLICES: Gvr = ("discovery.k8s.io", "v1", "endpointslices")
CORE_RESOURCES = (NAMESPACES, SERVICES, ENDPOINT_SLICES, PODS)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DISCOVERY_LABEL = "metamesh.io/discovery"
#: Set by the sidecar injector (as Istio's is): the Pod has a proxy, so mutual TLS to it works.
TLS_MODE_LABEL = "security.istio.io/tlsMode"
SCHEME = "kubernetes://"


def plural(kind: str) -> str:
    """The plural resource name of one of metamesh's kinds (``MetaRouter`` -> ``metarouters``)."""
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"  # serviceentries, as Istio names them
    return lower + ("es" if lower.endswith("s") else "s")


def custom_resources() -> list[tuple[Gvr, str]]:
    """``((group, version, plural), kind)`` of every CRD kind metamesh reads, one version each
    (the newest listed: the API server converts between a CRD's versions)."""
    out = []
    for kind, cls in sorted(KINDS.items()):
        group, version = cls.API_VERSIONS[-1].split("/")
        out.append(((group, version, plural(kind)), kind))
    return out


def resource_name(gvr: Gvr) -> str:
    """``metarouters.metaprotocol.aeraki.io``, ``services`` (core)."""
    group, _, name = gvr
    return f"{name}.{group}" if group else name


def pseudo_file(gvr: Gvr, namespace: str, name: str) -> str:
    group, version, resource = gvr
    prefix = f"{group}/{resource}" if group else f"{version}/{resource}"
    return f"{SCHEME}{prefix}/{namespace}/{name}" if namespace else f"{SCHEME}{prefix}/{name}"


def object_key(gvr: Gvr, obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (resource_name(gvr), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


@dataclass
class KubeObjects:
    """What the source has seen, per resource: ``{resource name: {(ns, name): object}}``."""

    by_resource: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=dict)

    def replace(self, gvr: Gvr, objects: Iterable[Obj]) -> None:
        """A (re)list: the resource's objects are exactly ``objects`` now."""
        table: dict[tuple[str, str], Obj] = {}
        for obj in objects:
            _, ns, name = object_key(gvr, obj)
            table[(ns, name)] = obj
        self.by_resource[resource_name(gvr)] = table

    def apply(self, gvr: Gvr, event_type: str, obj: Obj) -> None:
        """One watch event (ADDED, MODIFIED, DELETED)."""
        _, ns, name = object_key(gvr, obj)
        table = self.by_resource.setdefault(resource_name(gvr), {})
        if event_type == "DELETED":
            table.pop((ns, name), None)
        else:
            table[(ns, name)] = obj

    def of(self, gvr: Gvr) -> dict[tuple[str, str], Obj]:
        return self.by_resource.get(resource_name(gvr), {})


def is_mesh_port(name: str) -> bool:
    """A port name that selects an Aeraki protocol (``tcp-metaprotocol-thrift-x``)."""
    parts = name.split("-")
    return len(parts) >= 2 and parts[1].lower() in KNOWN_PROTOCOLS


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.{CLUSTER_DOMAIN}"


class Translator:
    """Turns a :class:`KubeObjects` into pseudo-files, caching per object (module doc).

    The cache key is the object as metamesh reads it (no status, no server-set metadata), so
    a status written back or a Pod's changing status gives the very same ResourceSet.
    ``objects`` maps each pseudo-file of the last call to the object it came from.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, ResourceSet]] = {}
        # the input objects of each pseudo-file at the last call: the store replaces an object
        # on every event, so the same objects (by identity) mean nothing to translate again
        self._inputs: dict[str, tuple[Obj | None, ...]] = {}
        self.objects: dict[str, tuple[Gvr, Obj]] = {}

    def sets(self, store: KubeObjects, gvrs: Iterable[tuple[Gvr, str]]) -> dict[str, ResourceSet]:
        hidden = _hidden_namespaces(store.of(NAMESPACES).values())
        out: dict[str, ResourceSet] = {}
        objects: dict[str, tuple[Gvr, Obj]] = {}
        inputs: dict[str, tuple[Obj | None, ...]] = {}
        for gvr, _kind in gvrs:
            for (ns, name), obj in sorted(store.of(gvr).items()):
                if ns in hidden:
                    continue
                where = pseudo_file(gvr, ns, name)
                objects[where], inputs[where] = (gvr, obj), (obj,)
                if not self._same(where, inputs[where]):
                    self._load(where, as_written(with_persisted_address(obj)))
                out[where] = self._cache[where][1]
        slices: dict[tuple[str, str], list[Obj]] = {}
        for (ns, _), obj in sorted(store.of(ENDPOINT_SLICES).items()):
            labels = (obj.get("metadata") or {}).get("labels") or {}
            service = labels.get(SERVICE_NAME_LABEL)
            if service:
                slices.setdefault((ns, service), []).append(obj)
        pods = store.of(PODS)
        for (ns, name), svc in sorted(store.of(SERVICES).items()):
            if ns in hidden or not _mesh_ports(svc):
                continue
            where = pseudo_file(SERVICES, ns, name)
            mine = slices.get((ns, name), [])
            refs = [_pod_ref(e) for eps in mine for e in eps.get("endpoints") or []]
            objects[where] = (SERVICES, svc)
            inputs[where] = (svc, *mine, *(pods.get((ns, r)) if r else None for r in refs))
            if not self._same(where, inputs[where]):
                self._load(where, service_entry(svc, mine, pods))
            out[where] = self._cache[where][1]
        self._cache = {k: v for k, v in self._cache.items() if k in out}
        self._inputs = inputs
        self.objects = objects
        return out

    def _same(self, where: str, inputs: tuple[Obj | None, ...]) -> bool:
        before = self._inputs.get(where)
        return (
            where in self._cache
            and before is not None
            and len(before) == len(inputs)
            and all(a is b for a, b in zip(before, inputs, strict=True))
        )

    def _load(self, where: str, obj: Obj) -> None:
        text = json.dumps(obj, indent=1, sort_keys=True)
        cached = self._cache.get(where)
        if cached is None or cached[0] != text:
            self._cache[where] = (text, load_text(text, where))


def _pod_ref(endpoint: Obj) -> str | None:
    ref = endpoint.get("targetRef") or {}
    return str(ref["name"]) if ref.get("kind") == "Pod" and ref.get("name") else None


def _hidden_namespaces(namespaces: Iterable[Obj]) -> set[str]:
    hidden = set()
    for obj in namespaces:
        meta = obj.get("metadata") or {}
        if (meta.get("labels") or {}).get(DISCOVERY_LABEL) == "disabled":
            hidden.add(str(meta.get("name")))
    return hidden


def _mesh_ports(svc: Obj) -> list[Obj]:
    ports = (svc.get("spec") or {}).get("ports") or []
    return [p for p in ports if isinstance(p, dict) and is_mesh_port(str(p.get("name") or ""))]


def service_entry(svc: Obj, slices: Iterable[Obj], pods: Mapping[tuple[str, str], Obj]) -> Obj:
    """The ServiceEntry (as a JSON object) of one Service, its EndpointSlices and their Pods."""
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    name, ns = str(meta.get("name")), str(meta.get("namespace") or "default")
    ports = []
    for port in _mesh_ports(svc):
        entry: Obj = {"number": port.get("port"), "name": port.get("name")}
        target = port.get("targetPort")
        if isinstance(target, int):
            entry["targetPort"] = target
        ports.append(entry)
    names = {str(p["name"]) for p in ports}
    endpoints = []
    for eps in slices:
        slice_ports = {
            str(p.get("name") or ""): p.get("port")
            for p in eps.get("ports") or []
            if str(p.get("name") or "") in names and isinstance(p.get("port"), int)
        }
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            endpoints.extend(_workload_entries(endpoint, ns, slice_ports, pods))
    cluster_ip = spec.get("clusterIP")
    addresses = [cluster_ip] if cluster_ip and cluster_ip != "None" else []
    annotations = {"metamesh.io/kubernetes-service": f"{ns}/{name}"}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": f"k8s-{name}", "namespace": ns, "annotations": annotations},
        "spec": {
            "hosts": [service_host(name, ns)],
            "addresses": addresses,
            "ports": ports,
            "location": "MESH_INTERNAL",
            "resolution": "STATIC" if endpoints else "NONE",
            "endpoints": endpoints,
        },
    }


def _workload_entries(
    endpoint: Obj, namespace: str, ports: Mapping[str, Any], pods: Mapping[tuple[str, str], Obj]
) -> list[Obj]:
    ref = endpoint.get("targetRef") or {}
    pod = pods.get((namespace, str(ref.get("name")))) if ref.get("kind") == "Pod" else None
    labels: dict[str, str] = {}
    account = None
    if pod is not None:
        labels = dict((pod.get("metadata") or {}).get("labels") or {})
        if labels.get(TLS_MODE_LABEL) == "istio":  # it has a sidecar: its identity holds
            account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    out = []
    for address in endpoint.get("addresses") or []:
        entry: Obj = {"address": address, "ports": dict(ports), "labels": labels}
        if account:
            entry["serviceAccount"] = account
        out.append(entry)
    return out


def as_written(obj: Obj) -> Obj:
    """The object as a user wrote it: ``status`` and server-set metadata do not matter here."""
    meta = dict(obj.get("metadata") or {})
    for key in ("managedFields", "resourceVersion", "uid", "generation", "creationTimestamp"):
        meta.pop(key, None)
    annotations = dict(meta.get("annotations") or {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    meta["annotations"] = annotations
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}
