"""Per-file acceptance (control/sources/accept.py): which version of each file is in force."""

from __future__ import annotations

from metamesh.api import load_text
from metamesh.api.loader import ResourceSet
from metamesh.control.sources import Held, accept
from tests.control.cases import router, rules, service_entry


def files(**texts: str) -> dict[str, ResourceSet]:
    return {name: load_text(text, name) for name, text in texts.items()}


def test_a_valid_directory_is_in_force_as_it_is() -> None:
    current = files(a=service_entry() + "---" + rules(), b=router("v2"))
    result = accept(current, {})
    assert result.held == {} and result.problems == []
    assert all(result.in_force[f] is current[f] for f in current)
    assert len(result.resources.items) == 3


def test_own_errors_fall_back_to_the_last_good_version_else_to_nothing() -> None:
    good = files(a=service_entry(), b=service_entry(host="kv2"))
    now = files(a=service_entry(extra="  portz: []"), b="b: [\n")
    result = accept(now, {"a": good["a"]})
    assert result.in_force == {"a": good["a"]}
    (why_a, (reason_a,)), (why_b, (reason_b,)) = result.held["a"], result.held["b"]
    assert (why_a, reason_a.field_path) == (Held.LAST_GOOD, "spec.portz")
    assert why_b is Held.NOTHING and reason_b.message.startswith("invalid YAML")
    assert [p.file for p in result.problems] == ["a", "b"]


def test_an_unchanged_file_broken_by_another_ones_edit_is_left_out() -> None:
    # b is unchanged (its last good version is the current one) and needs subset v2, which
    # a's valid edit removed: b cannot step back to anything else, so it is left out, and
    # the loop ends
    before = files(a=service_entry() + "---" + rules(), b=router("v2"))
    now = {"a": load_text(service_entry() + "---" + rules(subsets="[v1]"), "a"), "b": before["b"]}
    result = accept(now, before)
    assert result.in_force == {"a": now["a"]}
    why, (reason,) = result.held["b"]
    assert why is Held.NOTHING and reason.field_path.endswith("destination.subset")


def test_a_reference_error_steps_the_file_back_to_a_version_that_fits() -> None:
    # b's edit needs subset v3, which does not exist: its last good version (v1) is served
    before = files(a=service_entry() + "---" + rules(), b=router("v1"))
    now = {"a": before["a"], "b": load_text(router("v3"), "b")}
    result = accept(now, before)
    assert result.in_force == {"a": before["a"], "b": before["b"]}
    assert result.held["b"][0] is Held.LAST_GOOD


def test_a_duplicate_is_held_back_in_the_later_file() -> None:
    current = files(a=service_entry(), b=service_entry())
    result = accept(current, {})
    assert list(result.in_force) == ["a"]
    why, (reason,) = result.held["b"]
    assert why is Held.NOTHING and reason.message.startswith("duplicate resource")
