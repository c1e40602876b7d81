"""Virtual addresses for ServiceEntries without ``addresses``, allocated once and persisted.

A ServiceEntry without addresses still needs a listener address. Every control plane can
derive one (:func:`metamesh.control.model.allocate_addresses`: a slot picked by the host's
hash, collisions probed in sorted order), but a collision makes the address of one host depend
on which other hosts exist, so two replicas (or one restarted with a different set of objects)
could disagree, and an address could move under a client that resolved it.

So in a cluster the **leader** (the replica holding the Lease, :mod:`.kubernetes_status`)
allocates the address of each single-host ServiceEntry object without ``spec.addresses`` once
and writes it to the object's status, as Istio (1.22+) does for its auto-allocated addresses:

.. code-block:: yaml

    status:
      addresses:
      - {value: 127.240.14.81, host: orders.shop.svc.cluster.local}

Every replica then serves the address in the status (:func:`with_persisted_address`, used by
the translation), so the address of a host never changes while its ServiceEntry exists,
whoever leads, across restarts. The allocation avoids every address already written by hand or
persisted. A ServiceEntry with several hosts keeps the derived allocation (one address per
host, not persisted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metamesh.api.base import fqdn
from metamesh.control.model import allocate_addresses

Obj = dict[str, Any]
SERVICE_ENTRY = "ServiceEntry"


def _hosts(obj: Obj) -> list[str]:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    return [fqdn(str(h), namespace) for h in (obj.get("spec") or {}).get("hosts") or []]


def persisted(obj: Obj) -> dict[str, str]:
    """``{host: address}`` in the object's ``status.addresses``."""
    out = {}
    for entry in (obj.get("status") or {}).get("addresses") or []:
        if isinstance(entry, dict) and entry.get("value") and entry.get("host"):
            out[str(entry["host"])] = str(entry["value"])
    return out


def wants_address(obj: Obj) -> bool:
    """A single-host ServiceEntry object without ``spec.addresses``."""
    spec = obj.get("spec") or {}
    return obj.get("kind") == SERVICE_ENTRY and not spec.get("addresses") and len(_hosts(obj)) == 1


def with_persisted_address(obj: Obj) -> Obj:
    """``obj`` with its persisted address as ``spec.addresses`` (unchanged if it has none)."""
    if not wants_address(obj):
        return obj
    address = persisted(obj).get(_hosts(obj)[0])
    if address is None:
        return obj
    return obj | {"spec": {**obj.get("spec", {}), "addresses": [address]}}


def allocations(objects: Mapping[str, Obj]) -> dict[str, Obj]:
    """``{key: status patch}`` for each ServiceEntry object (by ``key``) that needs an address
    persisted, avoiding every address written by hand or already persisted."""
    taken: set[str] = set()
    missing: dict[str, str] = {}  # host -> key
    for key, obj in sorted(objects.items()):
        if obj.get("kind") != SERVICE_ENTRY:
            continue
        taken.update(str(a) for a in (obj.get("spec") or {}).get("addresses") or [])
        taken.update(persisted(obj).values())
        if wants_address(obj):
            host = _hosts(obj)[0]
            if host not in persisted(obj):
                missing.setdefault(host, key)
    allocated = allocate_addresses(missing, taken)
    return {
        key: {"status": {"addresses": [{"value": allocated[host], "host": host}]}}
        for host, key in missing.items()
    }
