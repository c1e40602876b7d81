"""Interop with Caucho's Java Hessian 2.0 (Debian libhessian-java) in both directions.

The oracle (tests/peers/java/HessianOracle.java) is compiled with javac into a temporary
directory. It writes its cases for metamesh to decode, and it reads what metamesh wrote and prints
each value in a canonical text form with Java types, compared with :class:`JavaCanon`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from metamesh.codecs.hessian2 import Hessian2Decoder, dumps, loads
from tests.codecs.hessian2.interop_cases import JAVA_SHARED, JAVA_WRITES, PY_WRITES
from tests.codecs.hessian2.javaview import java_canon, same_types

pytestmark = pytest.mark.interop

HESSIAN_JAR = Path("/usr/share/java/hessian.jar")
ORACLE_SRC = Path(__file__).parents[2] / "peers" / "java"
JAVA_OPTS = [
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.math=ALL-UNNAMED",
]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("java/javac not installed")
    if not HESSIAN_JAR.exists():
        pytest.skip(f"{HESSIAN_JAR} missing (apt-get install libhessian-java)")
    out = tmp_path_factory.mktemp("hessian_oracle")
    sources = [ORACLE_SRC / "HessianOracle.java", *ORACLE_SRC.glob("com/example/*.java")]
    subprocess.run(
        ["javac", "-nowarn", "-cp", str(HESSIAN_JAR), "-d", str(out), *map(str, sources)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return ["java", *JAVA_OPTS, "-cp", f"{out}:{HESSIAN_JAR}", "HessianOracle"]


@pytest.fixture(scope="module")
def java_written(oracle: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("java_written")
    subprocess.run([*oracle, "write", str(out)], check=True, capture_output=True, timeout=120)
    return {p.stem: p.read_bytes() for p in out.glob("*.bin")}


@pytest.fixture(scope="module")
def java_read(oracle: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("py_written")
    for name, value in PY_WRITES.items():
        (out / f"{name}.bin").write_bytes(dumps(value))
    files = sorted(str(p) for p in out.glob("*.bin"))
    result = subprocess.run(
        [*oracle, "read", *files], check=True, capture_output=True, text=True, timeout=120
    )
    lines = (line.split("\t", 1) for line in result.stdout.splitlines())
    return {name: text for name, text in lines}


def test_java_wrote_every_case(java_written: dict[str, bytes]) -> None:
    assert set(java_written) == set(JAVA_WRITES)


@pytest.mark.parametrize("name", sorted(JAVA_WRITES))
def test_metamesh_decodes_what_java_wrote(java_written: dict[str, bytes], name: str) -> None:
    data = java_written[name]
    value = loads(data)
    if name == "self_list":
        assert value[0] == "me" and value[1] is value
    else:
        assert same_types(value, JAVA_WRITES[name])
    skipper = Hessian2Decoder(data)
    skipper.skip()
    assert skipper.offset == len(data)


@pytest.mark.parametrize("name", sorted(set(JAVA_WRITES) - {"bytes_70000"}))
def test_metamesh_reencodes_java_bytes_exactly(java_written: dict[str, bytes], name: str) -> None:
    # (Java cuts long binaries where its output buffer happens to end: not reproducible)
    data = java_written[name]
    assert dumps(loads(data)) == data


@pytest.mark.parametrize(("name", "a", "b"), JAVA_SHARED)
def test_java_shared_references_decode_to_one_object(
    java_written: dict[str, bytes], name: str, a: int, b: int
) -> None:
    value = loads(java_written[name])
    assert value[a] is value[b]


@pytest.mark.parametrize("name", sorted(PY_WRITES))
def test_java_reads_what_metamesh_wrote(java_read: dict[str, str], name: str) -> None:
    assert java_read[name] == java_canon(PY_WRITES[name])


def test_java_keeps_the_shared_reference(java_read: dict[str, str]) -> None:
    # the second element refers back to the first object: the oracle prints ^1, not a copy
    assert java_read["list_same_pojo_twice"].endswith(",^1]")
    assert java_read["self_list"] == "java.util.ArrayList[str:me,^0]"
