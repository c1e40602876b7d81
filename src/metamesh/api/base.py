"""The shared shape of every resource model: spelling, strictness, metadata, string matches.

Users write Kubernetes-style YAML with camelCase keys (``exportTo``, ``targetPort``); the Python
attributes are snake_case. :class:`SpecModel` makes the camelCase name the alias, accepts the
snake_case name as well (protobuf JSON also accepts the original field names), rejects unknown
keys (a typo such as ``weigth`` must not silently vanish), treats a null value as an absent
key (``routes:`` with nothing after it) and freezes instances, because loaded
resources feed immutable config snapshots.

The alias generator is hand-written rather than pydantic's ``to_camel``, which would turn
``consecutive_5xx_errors`` into ``consecutive5XxErrors`` instead of Istio's
``consecutive5xxErrors``.

:class:`Resource` is the Kubernetes envelope (``apiVersion``, ``kind``, ``metadata``, ``spec``,
``status``). ``metadata`` keeps any extra key (labels, annotations, uid, resourceVersion, ...)
and ``status`` is accepted and ignored, so objects exported with ``kubectl get -o yaml`` load.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_NAMESPACE = "default"
CLUSTER_DOMAIN = "svc.cluster.local"


def camel_alias(name: str) -> str:
    """``export_to`` -> ``exportTo``; ``consecutive_5xx_errors`` -> ``consecutive5xxErrors``."""
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class SpecModel(BaseModel):
    """Base of every spec-level model: camelCase aliases, unknown keys rejected, frozen."""

    model_config = ConfigDict(
        alias_generator=camel_alias,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """``routes:`` with no value (YAML null) means "not set", as in Kubernetes."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Metadata(BaseModel):
    """Kubernetes object metadata; only name and namespace matter, the rest is kept as is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    namespace: str = DEFAULT_NAMESPACE
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class StringMatch(SpecModel):
    """One of ``exact``, ``prefix`` or ``regex`` (RE2, as in Aeraki: :mod:`metamesh.api.regex`).

    An empty match (``{}``), like a null one in an attribute map, means "the attribute is
    present", and so does ``regex: "*"``, as in Aeraki.
    """

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        chosen = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set only one of exact, prefix, regex (got {', '.join(chosen)})")
        return self

    @property
    def is_presence(self) -> bool:
        """True when the match only requires the attribute to be present."""
        return (self.exact is None and self.prefix is None and self.regex is None) or (
            self.regex == "*"
        )


class WorkloadSelector(SpecModel):
    """Istio's ServiceEntry ``workloadSelector``: ``{labels: {...}}``."""

    labels: dict[str, str] = Field(default_factory=dict)


class LabelSelector(SpecModel):
    """Istio's ``selector`` of security policies: ``{matchLabels: {...}}``."""

    match_labels: dict[str, str] = Field(default_factory=dict)


class Resource(BaseModel):
    """The Kubernetes envelope shared by every kind; subclasses narrow ``spec``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    API_VERSIONS: ClassVar[tuple[str, ...]] = ()
    KIND: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = True

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    status: Any = None

    @model_validator(mode="after")
    def _check_envelope(self) -> Resource:
        if self.api_version not in self.API_VERSIONS:
            raise ValueError(
                f"apiVersion {self.api_version!r} is not one of {', '.join(self.API_VERSIONS)} "
                f"for kind {self.KIND}"
            )
        if self.kind != self.KIND:
            raise ValueError(f"kind {self.kind!r} does not match {self.KIND}")
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def ref(self) -> str:
        """``namespace/name`` (just ``name`` for cluster-scoped kinds)."""
        return f"{self.namespace}/{self.name}" if self.NAMESPACED else self.name


def fqdn(host: str, namespace: str) -> str:
    """Istio's short-name rule: a host without a dot is ``<host>.<namespace>.svc.cluster.local``.

    Names that already contain a dot (``reviews.prod``, an FQDN, a Dubbo interface name) and
    wildcards are returned unchanged.
    """
    if "." in host or host.startswith("*") or not host:
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
