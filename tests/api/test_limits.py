"""Load limits: alias expansion, file size, documents per file, resources per load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metamesh.api import load_paths, load_text
from metamesh.api import loader as loader_module
from metamesh.api.limits import LimitExceeded, LoadLimits, expansion, read_limited
from metamesh.api.loader import LoadCache, load_files
from tests.api.bombs import LARGE_BOMB, SMALL_BOMB, nested_anchors

AP = """apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {{name: {name}}}
spec: {{protocol: {name}, codec: aeraki.meta_protocol.codec.thrift}}
"""


def aps(*names: str) -> str:
    return "---\n".join(AP.format(name=name) for name in names)


def compose(text: str) -> yaml.Node:
    node = yaml.compose(text, Loader=yaml.CSafeLoader)
    assert node is not None
    return node


def test_expansion_counts_each_alias_use_as_a_copy() -> None:
    # own: the mapping, keys a and b, a's list and its 2 items, b's list = 7 nodes;
    # b's two aliases of a's list (3 nodes each) add 6
    assert expansion(compose("a: &a [x, y]\nb: [*a, *a]\n")) == (7, 13)
    assert expansion(compose("a: [x, y]\n")) == (5, 5)


def test_a_recursive_alias_expands_without_end() -> None:
    assert expansion(compose("a: &a [x, *a]\n"))[1] is None
    assert expansion(compose("a: &a {k: [*a]}\n"))[1] is None


def test_the_count_is_linear_even_for_a_deep_chain_of_aliases() -> None:
    chain = ["l0: &l0 [x, x]"] + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 3000)]
    start = time.perf_counter()
    own, expanded = expansion(compose("\n".join(chain)))
    assert time.perf_counter() - start < 1.0
    assert own == 1 + 3000 * 2 + 2  # mapping, 3000 keys and lists, two scalars
    assert expanded is not None and expanded >= 2**62  # saturated, not a 900-digit integer


@pytest.mark.parametrize("bomb", [SMALL_BOMB, LARGE_BOMB], ids=["9x9", "12x10"])
def test_alias_bombs_are_refused_quickly_and_the_rest_of_the_file_loads(bomb: str) -> None:
    start = time.perf_counter()
    result = load_text(aps("before") + "---\n" + bomb + "---\n" + aps("after"), "bomb.yaml")
    assert time.perf_counter() - start < 1.0
    assert [item.resource.ref for item in result.items] == ["before", "after"]
    [problem] = result.problems
    assert problem.format().startswith("bomb.yaml:6: error: document refused: YAML aliases ")
    assert "the limit is 1,000 (alias_ratio 10 x its own" in problem.message
    assert problem.document == 1


def test_a_recursive_alias_is_refused() -> None:
    [problem] = load_text(AP.format(name="x") + "status: &s [*s]\n", "r.yaml").problems
    assert problem.line == 1 and "refers to a node that contains it" in problem.message


SHARED = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: kv
  namespace: ns
  labels: &common {app: kv, tier: backend}
spec:
  host: kv
  trafficPolicy: &policy
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 64, connectTimeout: 500ms}}
    outlierDetection: {consecutiveGatewayErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
"""


def test_aliases_that_share_blocks_are_accepted() -> None:
    subsets = "".join(
        f"  - {{name: v{i}, labels: {{<<: *common, version: v{i}}}, trafficPolicy: *policy}}\n"
        for i in range(100)
    )
    result = load_text(SHARED + subsets)
    assert result.problems == [] and len(result.items) == 1
    subset = result.items[0].resource.spec.subsets[99]  # type: ignore[attr-defined]
    assert subset.labels == {"app": "kv", "tier": "backend", "version": "v99"}


def test_the_alias_limit_is_relative_to_the_document() -> None:
    doubled = "a: &a [x, x, x, x]\nb: *a\n"  # own 8, expanded 13
    strict = LoadLimits(alias_ratio=2, alias_floor=0)
    assert load_text(doubled, limits=strict).problems[0].message == "missing kind"
    tripled = doubled + "c: *a\nd: *a\n"  # own 10, expanded 25
    [problem] = load_text(tripled, limits=strict).problems
    assert "expand it to 25 nodes; the limit is 20 (alias_ratio 2 x its own 10 nodes" in str(
        problem.message
    )


def test_a_file_over_max_file_bytes_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text(aps("big", "bigger"))
    (tmp_path / "small.yaml").write_text("kind: List\nitems: []\n")
    result = load_paths([tmp_path], limits=LoadLimits(max_file_bytes=100))
    assert result.items == []
    [problem] = result.problems
    size = len(aps("big", "bigger"))
    assert problem.format() == (
        f"{tmp_path / 'big.yaml'}: error: {size} bytes is over the limit of 100 bytes per file "
        "(max_file_bytes): not read"
    )


def test_a_file_stops_at_max_documents() -> None:
    result = load_text(aps(*"abcde"), "many.yaml", limits=LoadLimits(max_documents=3))
    assert [item.resource.ref for item in result.items] == ["a", "b", "c"]
    [problem] = result.problems
    assert problem.format() == (
        "many.yaml:16: error: more than 3 documents, the limit per file (max_documents): "
        "the rest of the file is not read"
    )


def spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the loader reads from now on."""
    read: list[str] = []

    def spy(path: Path, max_bytes: int) -> str:
        read.append(path.name)
        return read_limited(path, max_bytes)

    monkeypatch.setattr(loader_module, "read_limited", spy)
    return read


def test_a_load_over_max_resources_is_refused_whole_and_parsing_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(aps("a1", "a2"))
    (tmp_path / "b.yaml").write_text(aps("b1", "b2"))
    (tmp_path / "c.yaml").write_text(aps("c1"))
    read = spy_reads(monkeypatch)
    limits = LoadLimits(max_resources=3)
    with pytest.raises(LimitExceeded) as refused:
        load_files([tmp_path], limits=limits)
    assert read == ["a.yaml", "b.yaml"]  # c.yaml is not parsed
    assert refused.value.problem.format() == (
        f"{tmp_path / 'b.yaml'}:6: error: ApplicationProtocol b2: over the limit of 3 resources "
        "in one load (max_resources): the whole load is refused"
    )
    # load_paths (metamesh validate) reports it as the load's only problem
    assert load_paths([tmp_path], limits=limits).problems == [refused.value.problem]
    # load_text alone holds one file to the same limit
    with pytest.raises(LimitExceeded):
        load_text(aps("p", "q", "r", "s"), limits=limits)


def test_files_from_the_cache_count_towards_max_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in "abc":
        (tmp_path / f"{name}.yaml").write_text(aps(f"{name}1", f"{name}2"))
    cache: LoadCache = {}
    assert len(load_paths([tmp_path], cache=cache).items) == 6
    limits = LoadLimits(max_resources=3)
    with pytest.raises(LimitExceeded, match=r"b\.yaml:6: .* over the limit of 3 resources"):
        load_files([tmp_path], cache=cache, limits=limits)
    assert set(cache) == {tmp_path / "a.yaml"}  # what was parsed up to the limit, no more

    # loading again while over the limit parses only the file that crosses it
    read = spy_reads(monkeypatch)
    (tmp_path / "b.yaml").write_text(aps("b3", "b4"))
    with pytest.raises(LimitExceeded):
        load_files([tmp_path], cache=cache, limits=limits)
    assert read == ["b.yaml"]


def test_invalid_objects_count_towards_max_resources_and_skipped_kinds_do_not() -> None:
    invalid = AP.format(name="bad").replace("codec:", "kodec:")
    foreign = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
    limits = LoadLimits(max_resources=3)
    text = "---\n".join([invalid, foreign, foreign, aps("a", "b")])
    assert load_text(text, limits=limits).objects_read == 3
    with pytest.raises(LimitExceeded, match=r"^<string>:24: error: ApplicationProtocol c: over"):
        load_text(text + "---\n" + aps("c"), limits=limits)


def _run_validate(*paths: Path) -> tuple[int, str, str, float, int]:
    """``metamesh validate`` in a child: exit code, stdout, stderr, seconds, max RSS in MB."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "metamesh", "validate", *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    out, err = child.stdout.read(), child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, out, err, time.perf_counter() - start, usage.ru_maxrss // 1024


def test_validate_refuses_the_bombs_without_ballooning(tmp_path: Path) -> None:
    (tmp_path / "a-small-bomb.yaml").write_text(SMALL_BOMB)
    (tmp_path / "b-large-bomb.yaml").write_text(LARGE_BOMB)
    (tmp_path / "c-good.yaml").write_text(aps("good"))
    code, out, err, seconds, rss_mb = _run_validate(tmp_path)
    assert code == 1 and "Error" not in err, err
    lines = out.splitlines()
    for line, name in zip(lines, ("a-small-bomb", "b-large-bomb"), strict=False):
        assert line.startswith(f"{tmp_path / name}.yaml:1: error: document refused: YAML aliases")
    assert lines[2:] == ["2 errors, 0 warnings in 1 resource from 1 file"]
    assert seconds < 15 and rss_mb < 250, (seconds, rss_mb)
    print(f"validate: {seconds:.2f} s, max RSS {rss_mb} MB")


def test_nested_anchors_stand_for_width_to_the_levels() -> None:
    own, expanded = expansion(compose("\n".join(nested_anchors(3, 4, indent=""))))
    assert (own, expanded) == (1 + 3 * 2 + 4, 1 + 3 + (1 + 4) + (1 + 4 * 5) + (1 + 4 * 21))
