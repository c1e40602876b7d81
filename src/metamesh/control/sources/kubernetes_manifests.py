"""The Kubernetes manifests of metamesh, generated: CRDs, the control plane, sidecar injection.

``metamesh render-manifests [crds|control-plane|sidecar-template|all]`` prints them; the files
under ``deploy/`` are this output, and a test keeps them in sync.

**CRDs** are generated from the pydantic models of :data:`metamesh.api.loader.KINDS`, so the
API server validates what metamesh validates (types, enums, bounds) and ``kubectl explain``
shows the same fields. Each model's JSON schema (serialization mode: a duration is the string
users write, not the float it becomes) is turned into a *structural* ``openAPIV3Schema``:
``$ref`` resolved inline, ``anyOf [X, null]`` -> ``X`` with ``nullable: true``, ``title``,
``default`` and ``additionalProperties: false`` dropped (the server prunes unknown fields, and
``kubectl`` reports them with server-side field validation), free-form objects marked
``x-kubernetes-preserve-unknown-fields``. ``status`` is free-form (the control plane writes
conditions there, :mod:`.kubernetes_status`) and is a subresource. A kind's API versions share
one schema; the last listed is the storage version. The Istio kinds are included for clusters
without Istio: where Istio is installed its CRDs are already there; apply only
``deploy/crds-aeraki.yaml`` then.

**The control plane**: a Namespace, a ServiceAccount, a ClusterRole with only what the source
uses (get/list/watch on the CRDs, Services, EndpointSlices, Pods, Namespaces; patch on the
CRDs' ``status``; create on Events), a Role in its own namespace for its Lease, the bindings,
a Deployment running ``metamesh control-plane --kubernetes --in-cluster`` with the injection
webhook, a Service for xDS and the webhook, and the MutatingWebhookConfiguration that sends
Pod creations in namespaces labelled ``metamesh-injection: enabled`` to it.

**The sidecar**: :func:`sidecar_containers` is what the webhook adds to a Pod (an init container
``metamesh-init`` running ``metamesh intercept`` with NET_ADMIN, which installs the nftables
rules before the application starts, and the ``metamesh-proxy`` container running ``metamesh
proxy --xds ... --intercept``, which picks listeners by original destination and removes the
rules when it exits; both leave the proxy's own user, 1337, out of the interception);
``sidecar-template`` prints a Pod with them, for those who add the sidecar by hand.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from metamesh.api.base import Resource
from metamesh.api.loader import KINDS
from metamesh.control.sources.kubernetes_objects import plural

Obj = dict[str, Any]
PARTS = ("crds", "control-plane", "sidecar-template")
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io")
XDS_PORT = 15010
WEBHOOK_PORT = 15017
WEBHOOK_TLS_DIR = "/etc/metamesh/webhook"
#: kubernetes.io/tls Secret with the webhook's certificate (made by cert-manager or by hand; the
#: MutatingWebhookConfiguration's caBundle must be its CA)
WEBHOOK_SECRET = "metamesh-webhook-tls"
PROXY_UID = 1337  # the proxy's own traffic is not intercepted (as Istio's)


# --- CRDs -------------------------------------------------------------------------------------


def structural(schema: Obj, defs: Obj) -> Obj:
    """A pydantic JSON schema node as a structural OpenAPI v3 schema (module docstring)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return structural(defs[name], defs)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options is not None:
        real = [o for o in options if o.get("type") != "null"]
        nullable = len(real) < len(options)
        out: Obj
        if len(real) == 1:
            out = structural(real[0], defs)
        else:
            types = {o.get("type") for o in real}
            out = (
                {"x-kubernetes-int-or-string": True}
                if types == {"integer", "string"}
                else {"x-kubernetes-preserve-unknown-fields": True}
            )
        if nullable:
            out["nullable"] = True
        return out
    kind = schema.get("type")
    out = {}
    for key in (
        "description",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "exclusiveMinimum",
        "exclusiveMaximum",
    ):
        if key in schema:
            out[key] = schema[key]
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if kind is None:
        return {"x-kubernetes-preserve-unknown-fields": True, **out}
    out["type"] = kind
    if kind == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props:
            out["properties"] = {k: structural(v, defs) for k, v in props.items()}
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = structural(schema.get("items") or {}, defs)
    return out


def spec_schema(cls: type[Resource]) -> Obj:
    schema = cls.model_json_schema(by_alias=True, mode="serialization")
    defs = schema.get("$defs", {})
    return structural(schema["properties"]["spec"], defs)


def crd(kind: str, cls: type[Resource]) -> Obj:
    groups: dict[str, list[str]] = {}
    for api_version in cls.API_VERSIONS:
        group, version = api_version.split("/")
        groups.setdefault(group, []).append(version)
    (group, versions), *_ = groups.items()
    schema: Obj = {
        "type": "object",
        "properties": {
            "spec": spec_schema(cls),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    name = plural(kind)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{name}.{group}",
            "labels": {"app.kubernetes.io/part-of": "metamesh"},
        },
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": name,
                "singular": kind.lower(),
            },
            "scope": "Namespaced" if cls.NAMESPACED else "Cluster",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == versions[-1],
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": copy.deepcopy(schema)},
                }
                for version in versions
            ],
        },
    }


def crds(*, istio: bool = True) -> list[Obj]:
    out = []
    for kind, cls in sorted(KINDS.items(), key=lambda kv: (kv[1].API_VERSIONS[0], kv[0])):
        is_istio = cls.API_VERSIONS[0].split("/")[0] in ISTIO_GROUPS
        if is_istio and not istio:
            continue
        out.append(crd(kind, cls))
    return out


# --- the control plane ----------------------------------------------------------------------


def _crd_rules() -> list[Obj]:
    by_group: dict[str, list[str]] = {}
    for kind, cls in sorted(KINDS.items()):
        group = cls.API_VERSIONS[0].split("/")[0]
        by_group.setdefault(group, []).append(plural(kind))
    rules = []
    for group, names in sorted(by_group.items()):
        rules.append({"apiGroups": [group], "resources": names, "verbs": ["get", "list", "watch"]})
        rules.append(
            {
                "apiGroups": [group],
                "resources": [f"{n}/status" for n in names],
                "verbs": ["get", "patch"],
            }
        )
    return rules


def control_plane(namespace: str, image: str) -> list[Obj]:
    labels = {"app": "metamesh-control-plane"}
    name = "metamesh-control-plane"
    cluster_rules = [
        *_crd_rules(),
        {
            "apiGroups": [""],
            "resources": ["services", "pods", "namespaces"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"metamesh.io/discovery": "disabled"}},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": cluster_rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "volumes": [
                            {"name": "webhook-tls", "secret": {"secretName": WEBHOOK_SECRET}}
                        ],
                        "containers": [
                            {
                                "name": "control-plane",
                                "image": image,
                                "args": [
                                    "control-plane",
                                    "--kubernetes",
                                    "--in-cluster",
                                    "--xds-address",
                                    "0.0.0.0",
                                    "--xds-port",
                                    str(XDS_PORT),
                                    "--kube-lease-namespace",
                                    namespace,
                                    "--webhook-cert",
                                    f"{WEBHOOK_TLS_DIR}/tls.crt",
                                    "--webhook-key",
                                    f"{WEBHOOK_TLS_DIR}/tls.key",
                                    "--webhook-port",
                                    str(WEBHOOK_PORT),
                                    "--sidecar-image",
                                    image,
                                    "--sidecar-xds",
                                    f"{name}.{namespace}.svc:{XDS_PORT}",
                                ],
                                "volumeMounts": [
                                    {
                                        "name": "webhook-tls",
                                        "mountPath": WEBHOOK_TLS_DIR,
                                        "readOnly": True,
                                    }
                                ],
                                "env": [
                                    {
                                        "name": "POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    }
                                ],
                                "ports": [
                                    {"name": "grpc-xds", "containerPort": XDS_PORT},
                                    {"name": "https-webhook", "containerPort": WEBHOOK_PORT},
                                ],
                                "securityContext": {
                                    "runAsNonRoot": True,
                                    "runAsUser": PROXY_UID,
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "grpc-xds", "port": XDS_PORT, "targetPort": XDS_PORT},
                    {"name": "https-webhook", "port": 443, "targetPort": WEBHOOK_PORT},
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "metamesh-sidecar-injector"},
            "webhooks": [
                {
                    "name": "sidecar-injector.metamesh.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Ignore",
                    "reinvocationPolicy": "Never",
                    "clientConfig": {
                        "service": {
                            "name": name,
                            "namespace": namespace,
                            "path": "/inject",
                            "port": 443,
                        }
                    },
                    "namespaceSelector": {"matchLabels": {"metamesh-injection": "enabled"}},
                    "objectSelector": {
                        "matchExpressions": [
                            {
                                "key": "sidecar.metamesh.io/inject",
                                "operator": "NotIn",
                                "values": ["false"],
                            }
                        ]
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                }
            ],
        },
    ]


# --- the sidecar ------------------------------------------------------------------------------


def sidecar_containers(
    image: str, xds: str = f"metamesh-control-plane.metamesh-system.svc:{XDS_PORT}"
) -> tuple[Obj, Obj]:
    """(init container, proxy container) the injector adds to a Pod."""
    init = {
        "name": "metamesh-init",
        "image": image,
        "args": ["intercept", "--intercept-exclude-uid", str(PROXY_UID)],
        "securityContext": {
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
            "runAsUser": 0,
            "runAsNonRoot": False,
        },
    }
    proxy = {
        "name": "metamesh-proxy",
        "image": image,
        "args": [
            "proxy",
            "--xds",
            xds,
            "--admin-port",
            "15000",
            "--intercept",
            "--intercept-exclude-uid",
            str(PROXY_UID),
            "--node-id",
            "$(POD_NAME).$(POD_NAMESPACE)",
            "--namespace",
            "$(POD_NAMESPACE)",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "ports": [{"name": "http-admin", "containerPort": 15000}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 15000}, "periodSeconds": 2},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN"]},
        },
    }
    return init, proxy


def sidecar_template(image: str) -> list[Obj]:
    init, proxy = sidecar_containers(image)
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "my-app",
                "labels": {"app": "my-app", "version": "v1"},
                "annotations": {"sidecar.metamesh.io/status": "injected"},
            },
            "spec": {
                "initContainers": [init],
                "containers": [
                    {
                        "name": "app",
                        "image": "my-app:latest",
                        "ports": [{"name": "thrift", "containerPort": 9090}],
                    },
                    proxy,
                ],
            },
        }
    ]


# --- rendering --------------------------------------------------------------------------------


def documents(
    part: str, *, namespace: str = "metamesh-system", image: str = "metamesh:latest"
) -> list[Obj]:
    if part == "crds":
        return crds()
    if part == "crds-aeraki":
        return crds(istio=False)
    if part == "control-plane":
        return control_plane(namespace, image)
    if part == "sidecar-template":
        return sidecar_template(image)
    if part == "all":
        return [*crds(), *control_plane(namespace, image)]
    raise ValueError(f"unknown part {part!r}")


def render(
    part: str = "all", *, namespace: str = "metamesh-system", image: str = "metamesh:latest"
) -> str:
    header = f"# generated by `metamesh render-manifests {part}`; do not edit\n"
    body = yaml.safe_dump_all(
        documents(part, namespace=namespace, image=image), sort_keys=False, width=100
    )
    return header + "---\n" + body
