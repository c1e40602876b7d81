"""metamesh's resource models and their validation (the ``api`` layer).

Typed, immutable pydantic models of the resources metamesh reads, spelled as users already
write them: Istio's ServiceEntry and DestinationRule, Aeraki's ApplicationProtocol and
MetaRouter (plus metamesh's optional route extensions: timeout, retries, fault), metamesh's
MetaAuthorizationPolicy and Aeraki's DubboAuthorizationPolicy, Istio's WorkloadEntry,
PeerAuthentication and Sidecar. :mod:`~metamesh.api.loader` reads
YAML files and directories into a :class:`ResourceSet`; :func:`validate` applies Aeraki's webhook
rules and cross-reference checks and returns every :class:`Problem` found.

This layer sits at the bottom: it imports only the codec registry (to resolve codec names) and
never the proxy, runtime or xDS layers. See ``docs/resources.md`` for the field reference.
"""

from metamesh.api.authz import (
    DubboAuthorizationPolicy,
    MetaAuthorizationPolicy,
    dubbo_to_meta_policy,
)
from metamesh.api.base import Resource, StringMatch, fqdn
from metamesh.api.duration import format_duration, parse_duration
from metamesh.api.istio import DestinationRule, ServiceEntry, WorkloadEntryResource
from metamesh.api.loader import KINDS, Loaded, ResourceSet, load_paths, load_text
from metamesh.api.metaprotocol import ApplicationProtocol, MetaRoute, MetaRouter
from metamesh.api.problems import Problem
from metamesh.api.protocol import (
    PortProtocol,
    PortProtocolError,
    application_codecs,
    protocol_for_port,
)
from metamesh.api.security import PeerAuthentication
from metamesh.api.sidecar import Sidecar
from metamesh.api.validate import validate

__all__ = [
    "KINDS",
    "ApplicationProtocol",
    "DestinationRule",
    "DubboAuthorizationPolicy",
    "Loaded",
    "MetaAuthorizationPolicy",
    "MetaRoute",
    "MetaRouter",
    "PeerAuthentication",
    "PortProtocol",
    "PortProtocolError",
    "Problem",
    "Resource",
    "ResourceSet",
    "ServiceEntry",
    "Sidecar",
    "StringMatch",
    "WorkloadEntryResource",
    "application_codecs",
    "dubbo_to_meta_policy",
    "format_duration",
    "fqdn",
    "load_paths",
    "load_text",
    "parse_duration",
    "protocol_for_port",
    "validate",
]
