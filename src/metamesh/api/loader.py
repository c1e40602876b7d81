"""Loading resources from YAML: files, multi-document streams and whole directories.

Each document is dispatched on ``kind`` (and its ``apiVersion`` checked) to a model class from
:data:`KINDS`; a Kubernetes ``List`` is unpacked. Every failure becomes a :class:`Problem`
rather than an exception: unreadable files, YAML syntax errors (with the parser's line; a tab
in the indentation is named as such), model errors (with the field path and the line of the
offending key), and loading goes on with the next document, so one run reports everything.

Objects of kinds metamesh does not read (a ``VirtualService``, a ``Deployment``, a ``Gateway``)
are skipped, as istiod skips what it does not own, so a directory shared with other tools still
loads: each such kind gives one ``info`` problem per file, listing the objects skipped. Only a
well-formed Kubernetes object is skipped (``apiVersion``, ``kind`` and ``metadata.name`` set);
anything else with an unknown kind is an error, and so is an unknown kind in an API group
metamesh owns (:data:`OWNED_GROUPS`, where it can only be a typo). A kind that looks like a
metamesh kind (``ServiceEntyr``) is skipped with a warning that names the likely intent.

YAML is *composed* into nodes before it is constructed into Python values; the node tree is kept
in each item's :class:`Origin`, which is how a field path found later by validation is mapped
back to a line number.

What a load may cost is bounded (:mod:`metamesh.api.limits`, :class:`LoadLimits`): a file over
``max_file_bytes`` is not read, a document whose aliases expand it past its limit is refused
before it is constructed, a file stops at ``max_documents``; each is a problem of that file.
Past ``max_resources`` in one load, :func:`load_files` (and :func:`load_text`) raise
:class:`LimitExceeded`, which :func:`load_paths` turns into the load's only problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from metamesh.api.authz import DubboAuthorizationPolicy, MetaAuthorizationPolicy
from metamesh.api.base import DEFAULT_NAMESPACE, Resource, fqdn
from metamesh.api.istio import DestinationRule, ServiceEntry, WorkloadEntryResource
from metamesh.api.limits import (
    DEFAULT_LIMITS,
    FileTooLarge,
    LimitExceeded,
    LoadLimits,
    alias_refusal,
    read_limited,
)
from metamesh.api.metaprotocol import ApplicationProtocol, MetaRouter
from metamesh.api.problems import FieldPath, Problem, Severity, format_path
from metamesh.api.redis import RedisDestination, RedisService
from metamesh.api.security import PeerAuthentication
from metamesh.api.sidecar import Sidecar
from metamesh.api.yaml_values import node_values

__all__ = [
    "KINDS",
    "OWNED_GROUPS",
    "LimitExceeded",
    "LoadLimits",
    "Loaded",
    "Origin",
    "ResourceSet",
    "fqdn",
    "load_file",
    "load_files",
    "load_paths",
    "load_text",
]

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (
        ServiceEntry,
        DestinationRule,
        ApplicationProtocol,
        MetaRouter,
        MetaAuthorizationPolicy,
        DubboAuthorizationPolicy,
        WorkloadEntryResource,
        PeerAuthentication,
        RedisService,
        RedisDestination,
        Sidecar,
    )
}
YAML_SUFFIXES = (".yaml", ".yml")
#: API groups whose every kind metamesh reads: an unknown kind there is an error, not skipped.
OWNED_GROUPS = frozenset(
    version.split("/")[0]
    for cls in KINDS.values()
    for version in cls.API_VERSIONS
    if not version.startswith(("networking.istio.io/", "security.istio.io/"))
)

R = TypeVar("R", bound=Resource)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource came from; ``node`` is its composed YAML tree (None if not from YAML)."""

    file: str
    document: int
    node: yaml.Node | None = None
    base: FieldPath = ()

    def line_of(self, path: FieldPath = ()) -> int | None:
        """1-based line of the deepest part of ``path`` present in the YAML (the key's line)."""
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for element in (*self.base, *path):
            child = _child(node, element)
            if child is None:
                break
            key_node, node = child
            line = key_node.start_mark.line + 1
        return line


def _child(node: yaml.Node, element: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(element):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(element, int):
        items: list[yaml.Node] = node.value
        if 0 <= element < len(items):
            return items[element], items[element]
    return None


@dataclass(frozen=True, slots=True)
class Loaded:
    resource: Resource
    origin: Origin

    def problem(self, path: FieldPath, message: str, severity: Severity = "error") -> Problem:
        """A problem about this resource at ``path`` (YAML spelling), with its line."""
        return Problem(
            file=self.origin.file,
            kind=self.resource.KIND,
            name=self.resource.ref,
            field_path=format_path(path),
            message=message,
            severity=severity,
            line=self.origin.line_of(path),
            document=self.origin.document,
        )


@dataclass(slots=True)
class ResourceSet:
    """Everything loaded, in load order, plus the problems met while loading.

    ``objects_read``: the objects of the kinds metamesh reads, valid or not (each was
    validated): what counts towards ``max_resources``.
    """

    items: list[Loaded] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    objects_read: int = 0

    def of_kind(self, cls: type[R]) -> list[R]:
        return [item.resource for item in self.items if isinstance(item.resource, cls)]

    def loaded(self, cls: type[Resource]) -> Iterator[Loaded]:
        return (item for item in self.items if isinstance(item.resource, cls))

    def extend(self, other: ResourceSet) -> None:
        self.items.extend(other.items)
        self.problems.extend(other.problems)
        self.objects_read += other.objects_read


#: Per-file results kept between loads: path -> ((inode, mtime ns, size), what it loaded).
LoadCache = dict[Path, tuple[tuple[int, int, int], "ResourceSet"]]


def load_paths(
    paths: Iterable[str | Path],
    default_namespace: str = DEFAULT_NAMESPACE,
    cache: LoadCache | None = None,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> ResourceSet:
    """Load files and directories (``*.yaml``/``*.yml``, recursively, in sorted order).

    With a ``cache`` (kept by the caller between loads, e.g. a watched directory), a file whose
    inode, modification time and size are unchanged is not parsed again: its resources (frozen
    models) and problems are reused. The cache is pruned to the files of this load. A load
    refused as a whole (over ``limits.max_resources``) gives a set holding only that problem.
    """
    try:
        files = load_files(paths, default_namespace, cache, limits)
    except LimitExceeded as exc:
        return ResourceSet(problems=[exc.problem])
    result = ResourceSet()
    for loaded in files.values():
        result.extend(loaded)
    return result


def load_files(
    paths: Iterable[str | Path],
    default_namespace: str = DEFAULT_NAMESPACE,
    cache: LoadCache | None = None,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> dict[Path, ResourceSet]:
    """What :func:`load_paths` loads, file by file (in load order).

    A file served from the ``cache`` gives the very ResourceSet object it gave before, so a
    caller can tell an unchanged file by identity. A path that does not exist is a key too,
    whose set holds the problem.

    Raises :class:`LimitExceeded` as soon as the files hold more than ``limits.max_resources``
    objects of the kinds metamesh reads (valid or not); the rest is not parsed. The cache then
    holds the files parsed up to there (so never more than the limit), and loading again while
    the directory is over the limit parses only the file that crossed it.
    """
    listed: list[tuple[Path, list[Path], ResourceSet]] = []
    for path in paths:
        missing = ResourceSet()
        listed.append((Path(path), _expand(Path(path), missing), missing))
    files: dict[Path, ResourceSet] = {}
    seen: LoadCache = {}
    total = 0
    try:
        for path, expanded, missing in listed:
            if missing.problems:
                files[path] = missing
            for file in expanded:
                key, loaded = _load_cached(file, cache, default_namespace, limits, total)
                total += loaded.objects_read
                if key is not None:
                    seen[file] = (key, loaded)
                files[file] = loaded
    finally:
        if cache is not None:
            cache.clear()
            cache.update(seen)
    return files


def load_file(
    file: Path,
    default_namespace: str,
    cache: LoadCache,
    limits: LoadLimits = DEFAULT_LIMITS,
    loaded_before: int = 0,
) -> ResourceSet:
    """One file as :func:`load_files` loads it among others, ``loaded_before`` objects into
    the load: the cached set when its inode, mtime and size are unchanged, else parsed again;
    its ``cache`` entry is updated (the rest of the cache is left alone). Raises
    :class:`LimitExceeded` past ``limits.max_resources`` objects in all."""
    key, loaded = _load_cached(file, cache, default_namespace, limits, loaded_before)
    if key is None:
        cache.pop(file, None)
    else:
        cache[file] = (key, loaded)
    return loaded


def _load_cached(
    file: Path, cache: LoadCache | None, namespace: str, limits: LoadLimits, total: int
) -> tuple[tuple[int, int, int] | None, ResourceSet]:
    """``file``'s set (from the ``cache`` if unchanged) and its cache key (None: unreadable)."""
    try:
        st = file.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = cache.get(file) if cache is not None else None
        if (
            hit is not None
            and hit[0] == key
            and hit[1].objects_read <= limits.max_resources - total
        ):
            return key, hit[1]
        return key, _load_file(file, namespace, limits, total)  # over the limit: it says where
    except (OSError, UnicodeDecodeError) as exc:
        return None, ResourceSet(problems=[Problem(str(file), "", "", "", f"cannot read: {exc}")])


def _load_file(file: Path, namespace: str, limits: LoadLimits, total: int) -> ResourceSet:
    """One file, read within ``max_file_bytes``, after ``total`` resources of this load."""
    try:
        text = read_limited(file, limits.max_file_bytes)
    except FileTooLarge as exc:
        return ResourceSet(problems=[Problem(str(file), "", "", "", str(exc))])
    return _load_stream(text, str(file), namespace, limits, limits.max_resources - total)


def _over_limit(origin: Origin, data: Any, limits: LoadLimits) -> LimitExceeded:
    message = (
        f"over the limit of {limits.max_resources:,} resources in one load (max_resources): "
        "the whole load is refused"
    )
    return LimitExceeded(_raw_problem(origin, data if isinstance(data, dict) else {}, (), message))


def _expand(path: Path, result: ResourceSet) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
    if path.is_file():
        return [path]
    result.problems.append(Problem(str(path), "", "", "", "no such file or directory"))
    return []


#: libyaml's C parser when PyYAML was built with it (the wheels are): the pure-Python scanner
#: costs ~20 ms per resource, which made a 1,000-service directory take seconds to load.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_text(
    text: str,
    file: str = "<string>",
    default_namespace: str = DEFAULT_NAMESPACE,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> ResourceSet:
    """Load every document of one YAML stream; a syntax error ends the stream, not the run.

    Raises :class:`LimitExceeded` past ``limits.max_resources`` resources.
    """
    return _load_stream(text, file, default_namespace, limits, limits.max_resources)


def _load_stream(
    text: str, file: str, namespace: str, limits: LoadLimits, budget: int
) -> ResourceSet:
    """:func:`load_text` with ``budget`` resources left in this load."""
    result = ResourceSet()
    skipped: dict[str, list[_Skipped]] = {}
    loader = _Loader(text)
    may_alias = "&" in text  # no anchor, no alias: nothing can expand
    index = 0
    try:
        while loader.check_node():
            if index == limits.max_documents:
                result.problems.append(_too_many_documents(loader, file, index, limits))
                break
            node = loader.get_node()
            if node is None:
                break
            refusal = alias_refusal(node, limits) if may_alias else None
            if refusal is not None:
                line = node.start_mark.line + 1
                result.problems.append(
                    Problem(file, "", "", "", refusal, line=line, document=index)
                )
            else:
                data = loader.construct_document(node) if may_alias else node_values(loader, node)
                origin = Origin(file, index, node)
                _load_document(data, origin, namespace, result, skipped)
                if result.objects_read > budget:
                    raise _over_limit(origin, data, limits)
            index += 1
    except yaml.YAMLError as exc:
        result.problems.append(_yaml_problem(exc, text, file, index))
    finally:
        loader.dispose()
    result.problems.extend(_skipped_problems(file, skipped))
    return result


def _too_many_documents(
    loader: yaml.SafeLoader, file: str, index: int, limits: LoadLimits
) -> Problem:
    event: yaml.Event = loader.peek_event()  # type: ignore[no-untyped-call]
    line = event.start_mark.line + 1 if event.start_mark is not None else None
    message = (
        f"more than {limits.max_documents:,} documents, the limit per file (max_documents): "
        "the rest of the file is not read"
    )
    return Problem(file, "", "", "", message, line=line, document=index)


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str, document: int) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    reason = getattr(exc, "problem", None) or str(exc)
    if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        # libyaml says only "found character that cannot start any token" for a leading tab
        reason = (
            f"a tab character (column {mark.column + 1}): YAML does not allow tabs in "
            "indentation; indent with spaces"
        )
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and start.line + 1 != line:
        reason += f" ({context} started at line {start.line + 1})"
    return Problem(file, "", "", "", f"invalid YAML: {reason}", line=line, document=document)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    if 0 <= line < len(lines) and 0 <= column < len(lines[line]):
        return lines[line][column]
    return ""


@dataclass(frozen=True, slots=True)
class _Skipped:
    """One object of a kind metamesh does not read."""

    api_version: str
    ref: str
    line: int | None


def _load_document(
    data: Any,
    origin: Origin,
    namespace: str,
    result: ResourceSet,
    skipped: dict[str, list[_Skipped]],
) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        result.problems.append(_raw_problem(origin, {}, (), "document is not a mapping"))
        return
    if data.get("kind") == "List" and isinstance(data.get("items"), list):
        for i, item in enumerate(data["items"]):
            _load_document(
                item,
                Origin(origin.file, origin.document, origin.node, ("items", i)),
                namespace,
                result,
                skipped,
            )
        return
    if _is_foreign(data):
        kind, metadata = data["kind"], data["metadata"]
        ref = f"{metadata['namespace']}/{metadata['name']}" if metadata.get("namespace") else ""
        entry = _Skipped(data["apiVersion"], ref or metadata["name"], origin.line_of())
        skipped.setdefault(kind, []).append(entry)
        return
    cls = _resource_class(data, origin, result)
    if cls is None:
        return
    result.objects_read += 1
    data = _with_namespace(data, namespace)
    try:
        resource = cls.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            result.problems.append(_raw_problem(origin, data, loc, _error_message(error)))
        return
    result.items.append(Loaded(resource, origin))


def _resource_class(
    data: dict[str, Any], origin: Origin, result: ResourceSet
) -> type[Resource] | None:
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        result.problems.append(_raw_problem(origin, data, ("kind",), "missing kind"))
        return None
    cls = KINDS.get(kind)
    if cls is None:
        known = ", ".join(sorted(KINDS))
        message = f"unknown kind {kind!r} (metamesh reads {known})"
        group = _group(data.get("apiVersion"))
        if group in OWNED_GROUPS:
            known = ", ".join(
                sorted(
                    k for k, c in KINDS.items() if any(_group(v) == group for v in c.API_VERSIONS)
                )
            )
            message = f"unknown kind {kind!r} in API group {group} (its kinds: {known})"
        else:
            missing = [k for k, v in _envelope(data).items() if not v]
            message += f"; not skipped: not a Kubernetes object (no {', '.join(missing)})"
        result.problems.append(_raw_problem(origin, data, ("kind",), message))
        return None
    api_version = data.get("apiVersion")
    if api_version not in cls.API_VERSIONS:
        message = f"apiVersion {api_version!r} is not one of {', '.join(cls.API_VERSIONS)}"
        result.problems.append(_raw_problem(origin, data, ("apiVersion",), message))
        return None
    return cls


def _envelope(data: dict[str, Any]) -> dict[str, bool]:
    """Which parts of a Kubernetes object's envelope ``data`` has (non-empty strings)."""
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return {
        key: isinstance(value, str) and bool(value)
        for key, value in (
            ("apiVersion", data.get("apiVersion")),
            ("kind", data.get("kind")),
            ("metadata.name", name),
        )
    }


def _group(api_version: object) -> str:
    """The API group of ``apiVersion`` (``""`` for the core group, ``v1``)."""
    if not isinstance(api_version, str) or "/" not in api_version:
        return ""
    return api_version.split("/")[0]


def _is_foreign(data: dict[str, Any]) -> bool:
    """A well-formed Kubernetes object of a kind metamesh does not read (it is skipped)."""
    return (
        all(_envelope(data).values())
        and data["kind"] not in KINDS
        and _group(data["apiVersion"]) not in OWNED_GROUPS
    )


def _skipped_problems(file: str, skipped: dict[str, list[_Skipped]]) -> Iterator[Problem]:
    """One problem per skipped kind: ``info``, or a warning when the kind looks like a typo."""
    for kind, objects in skipped.items():
        versions = ", ".join(sorted({o.api_version for o in objects}))
        names = ", ".join(o.ref for o in objects)
        count = f"{len(objects)} object{'s' if len(objects) > 1 else ''}"
        message = f"skipped {count} ({names}): metamesh does not read {kind} ({versions})"
        close = difflib.get_close_matches(kind, list(KINDS), n=1, cutoff=0.8)
        if close:
            message += f"; did you mean {close[0]}?"
        yield Problem(
            file=file,
            kind=kind,
            name="",
            field_path="",
            message=message,
            severity="warning" if close else "info",
            line=objects[0].line,
        )


def _with_namespace(data: dict[str, Any], namespace: str) -> dict[str, Any]:
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and not metadata.get("namespace"):
        return {**data, "metadata": {**metadata, "namespace": namespace}}
    return data


def _raw_problem(
    origin: Origin, data: dict[str, Any], path: Sequence[str | int], message: str
) -> Problem:
    kind = data.get("kind") if isinstance(data.get("kind"), str) else ""
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    name = str(metadata.get("name") or "")
    if name and kind in KINDS and KINDS[kind].NAMESPACED:
        name = f"{metadata.get('namespace') or DEFAULT_NAMESPACE}/{name}"
    return Problem(
        file=origin.file,
        kind=str(kind),
        name=name,
        field_path=format_path(path),
        message=message,
        line=origin.line_of(tuple(path)),
        document=origin.document,
    )


def _error_message(error: Any) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        return f"unknown field {loc[-1]!r}"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
