"""What the control plane thought of each object, written back to the cluster; leadership.

After every load the merge step tells the Kubernetes source which pseudo-files had problems
and which were held back (:meth:`~.kubernetes.KubernetesSource.accepted`). For each object
whose verdict changed, :class:`StatusWriter` writes, the way ``istioctl analyze`` / Istio's
status reporting do:

- on **custom resources** (MetaRouter, ServiceEntry, ...), through the ``status`` subresource
  (JSON merge patch), ``status.conditions`` with one condition ``Accepted``: ``"True"``
  (reason ``Valid``, or ``ValidWithWarnings``), or ``"False"`` with reason
  ``HeldAtLastGood`` (an earlier version stays in force) or ``Rejected`` (nothing of it is
  served), the problems as the message (a ServiceEntry the merge step left out because its
  host is declared first elsewhere is ``ValidWithWarnings`` saying so), ``observedGeneration``;
  and
  ``status.validationMessages``: one ``{level, field, message}`` per problem;
- a core **Event** on the object (custom resources and Services alike): ``Warning`` with
  reason ``InvalidConfig`` when it gets errors (again when they change), ``Normal`` with
  reason ``ConfigAccepted`` when it is valid again.

Only the **leader** writes (:class:`LeaderLease`: a ``coordination.k8s.io/v1`` Lease
``metamesh-control-plane`` taken when free or expired and renewed every ``renew`` seconds, with
optimistic concurrency on its ``resourceVersion``), so replicas do not fight over statuses.
A write that fails is counted and logged at debug level; the next verdict change writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from metamesh.api.problems import Problem
from metamesh.control.sources.accept import Held
from metamesh.control.sources.kubernetes_objects import SERVICES, Gvr, Obj
from metamesh.control.sources.kubernetes_vips import allocations

log = logging.getLogger("metamesh.control.sources.kubernetes")

COMPONENT = "metamesh-control-plane"
#: kubernetes_asyncio's per-call content type (its stubs do not declare the keyword)
MERGE_PATCH: Any = {"_content_type": "application/merge-patch+json"}
LEASE_NAME = "metamesh-control-plane"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What acceptance thought of one object's current version."""

    accepted: bool
    reason: str  # Valid, ValidWithWarnings, HeldAtLastGood, Rejected
    problems: tuple[Problem, ...]

    @property
    def message(self) -> str:
        if not self.problems:
            return "in force"
        lines = [
            f"{p.severity}: {p.field_path + ': ' if p.field_path else ''}{p.message}"
            for p in self.problems
        ]
        return "; ".join(lines)


def verdict(
    where: str,
    problems: Iterable[Problem],
    held: Mapping[str, Held],
    ignored: Mapping[str, list[str]] | None = None,
) -> Verdict:
    mine = tuple(p for p in problems if p.file == where and p.severity in ("error", "warning"))
    for line in (ignored or {}).get(where, ()):  # left out by the merge step: say so
        mine += (Problem(where, "ServiceEntry", "", "", line, severity="warning"),)
    why = held.get(where)
    if why is not None:
        reason = "HeldAtLastGood" if why is Held.LAST_GOOD else "Rejected"
        return Verdict(False, reason, mine)
    return Verdict(True, "ValidWithWarnings" if mine else "Valid", mine)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_patch(result: Verdict, generation: int | None) -> Obj:
    condition: Obj = {
        "type": "Accepted",
        "status": "True" if result.accepted else "False",
        "reason": result.reason,
        "message": result.message,
        "lastTransitionTime": _now(),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    messages = [
        {"level": p.severity.upper(), "field": p.field_path, "message": p.message}
        for p in result.problems
    ]
    return {"status": {"conditions": [condition], "validationMessages": messages}}


class StatusWriter:
    """Writes verdict changes (module docstring); ``enabled`` is the leadership."""

    def __init__(self, api: client.ApiClient, counters: dict[str, int]) -> None:
        self.api = api
        self.enabled = False
        self.counters = counters
        self._written: dict[str, Verdict] = {}
        self._allocating: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def update(
        self, objects: Mapping[str, tuple[Gvr, Obj]], verdicts: Mapping[str, Verdict]
    ) -> None:
        """``objects``: pseudo-file -> (resource, object) for every object published."""
        self._written = {k: v for k, v in self._written.items() if k in objects}
        if not self.enabled:
            return
        for where, result in verdicts.items():
            before = self._written.get(where)
            if before == result:
                continue
            self._written[where] = result
            gvr, obj = objects[where]
            if gvr != SERVICES and not _status_says(obj, result):
                self._spawn(self._write_status(gvr, obj, result))
            if not result.accepted:
                self._spawn(self._event(obj, "Warning", "InvalidConfig", result.message))
            elif result.problems:
                self._spawn(self._event(obj, "Warning", "ConfigWarning", result.message))
            elif before is not None and not before.accepted:
                self._spawn(self._event(obj, "Normal", "ConfigAccepted", "valid again; in force"))

    def allocate(self, objects: Mapping[str, tuple[Gvr, Obj]]) -> None:
        """Persist an address for each ServiceEntry that needs one (:mod:`.kubernetes_vips`)."""
        if not self.enabled:
            return
        entries = {where: obj for where, (_, obj) in objects.items()}
        for where, patch in allocations(entries).items():
            if where in self._allocating:
                continue
            self._allocating.add(where)
            gvr, obj = objects[where]
            self._spawn(self._patch_status(gvr, obj, patch, where))

    async def _patch_status(self, gvr: Gvr, obj: Obj, body: Obj, where: str) -> None:
        try:
            await self._patch(gvr, obj, body)
            self.counters["addresses_allocated"] += 1
        except _NotWritten:
            pass  # the next update allocates again
        finally:
            self._allocating.discard(where)

    def forget(self) -> None:
        """Leadership lost or regained: write every verdict again when it is next given."""
        self._written.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(_finished)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write_status(self, gvr: Gvr, obj: Obj, result: Verdict) -> None:
        meta = obj.get("metadata") or {}
        with contextlib.suppress(_NotWritten):
            await self._patch(gvr, obj, status_patch(result, meta.get("generation")))
            self.counters["status_writes"] += 1

    async def _patch(self, gvr: Gvr, obj: Obj, body: Obj) -> None:
        """A JSON merge patch of ``obj``'s status subresource (failures counted, logged)."""
        group, version, plural = gvr
        meta = obj.get("metadata") or {}
        api = client.CustomObjectsApi(self.api)
        try:
            if meta.get("namespace"):
                await api.patch_namespaced_custom_object_status(
                    group, version, meta["namespace"], plural, meta["name"], body, **MERGE_PATCH
                )
            else:
                await api.patch_cluster_custom_object_status(
                    group, version, plural, meta["name"], body, **MERGE_PATCH
                )
        except (ApiException, OSError, TimeoutError) as exc:
            self.counters["status_write_failures"] += 1
            log.debug("status of %s/%s not written: %s", plural, meta.get("name"), exc)
            raise _NotWritten from exc

    async def _event(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = _now()
        event: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await client.CoreV1Api(self.api).create_namespaced_event(namespace, event)
            self.counters["events_written"] += 1
        except (ApiException, OSError, TimeoutError) as exc:
            self.counters["status_write_failures"] += 1
            log.debug("event on %s not written: %s", meta.get("name"), exc)


def _finished(task: asyncio.Task[None]) -> None:
    """A write's end: its failure was counted and logged where it happened."""
    if not task.cancelled():
        task.exception()


class _NotWritten(Exception):
    """A status patch failed (counted and logged already)."""


def _status_says(obj: Obj, result: Verdict) -> bool:
    """Whether the object's status already holds this verdict (nothing to write)."""
    generation = (obj.get("metadata") or {}).get("generation")
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Accepted":
            return bool(
                condition.get("reason") == result.reason
                and condition.get("message") == result.message
                and condition.get("observedGeneration") == generation
            )
    return False


class LeaderLease:
    """One control plane replica leads: a Lease, taken and renewed (module docstring)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        identity: str | None = None,
        duration: int = 15,
        renew: float = 5.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity or f"metamesh-{uuid.uuid4().hex[:8]}"
        self.duration = duration
        self.renew = renew
        self.leading = False

    async def run(self, on_change: Any) -> None:
        """Try to take or renew the lease forever; ``on_change(leading)`` on every change."""
        while True:
            try:
                leading = await self._try()
            except (ApiException, OSError, TimeoutError) as exc:
                log.debug("lease %s/%s: %s", self.namespace, LEASE_NAME, exc)
                leading = False
            except Exception:
                log.exception("lease %s/%s", self.namespace, LEASE_NAME)
                leading = False
            if leading != self.leading:
                self.leading = leading
                log.info(
                    "%s: %s the leader (Lease %s/%s)",
                    self.identity,
                    "now" if leading else "no longer",
                    self.namespace,
                    LEASE_NAME,
                )
                on_change(leading)
            await asyncio.sleep(self.renew)

    async def _try(self) -> bool:
        api = client.CoordinationV1Api(self.api)
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "renewTime": stamp,
        }
        response: Any = await api.read_namespaced_lease(
            LEASE_NAME, self.namespace, _preload_content=False
        )
        try:
            current: Obj = await response.json() if response.status == 200 else {}
            status = response.status
        finally:
            response.release()
        if status == 404:
            body: Any = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": LEASE_NAME, "namespace": self.namespace},
                "spec": spec | {"acquireTime": stamp},
            }
            try:
                await api.create_namespaced_lease(self.namespace, body)
            except ApiException as again:
                if again.status == 409:
                    return False
                raise
            return True
        if status != 200:
            raise ApiException(status=status, reason="reading the lease")
        held = current.get("spec") or {}
        holder = held.get("holderIdentity")
        if holder and holder != self.identity and not _expired(held, now):
            return False
        replacement: Any = dict(current)
        replacement["spec"] = held | spec
        if holder != self.identity:
            replacement["spec"]["acquireTime"] = stamp
        try:
            await api.replace_namespaced_lease(LEASE_NAME, self.namespace, replacement)
        except ApiException as exc:
            if exc.status == 409:  # someone else renewed or took it first
                return False
            raise
        return True


def _expired(spec: Obj, now: datetime.datetime) -> bool:
    renewed = spec.get("renewTime")
    if not renewed:
        return True
    try:
        when = datetime.datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
    except ValueError:
        return True
    return (now - when).total_seconds() > float(spec.get("leaseDurationSeconds") or 15)
