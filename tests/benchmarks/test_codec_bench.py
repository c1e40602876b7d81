"""The codec micro-benchmark still runs (tiny iteration counts; no timing assertions)."""

from benchmarks.codec_bench import measure


def test_codec_bench_measures_every_case() -> None:
    rows = measure(number=3, repeat=1)
    cases = {r["case"] for r in rows}
    assert any("dubbo" in str(c) for c in cases) and any("thrift" in str(c) for c in cases)
    assert all(float(str(r["us"])) > 0 for r in rows)
