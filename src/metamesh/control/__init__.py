"""metamesh's control plane: resources -> mesh model -> per-node xDS resources.

:mod:`~metamesh.control.model` resolves loaded resources into a :class:`MeshModel`;
:mod:`~metamesh.control.translate` is the pure function from a model and a proxy identity to
Envoy v3 resources; :mod:`~metamesh.control.to_proxy` turns received xDS resources back into the
proxy's own config snapshot. The ADS server that pushes them lives in :mod:`metamesh.xds`.
"""

from metamesh.control.model import MeshModel, Service, allocate_addresses, build_model

__all__ = ["MeshModel", "Service", "allocate_addresses", "build_model"]
