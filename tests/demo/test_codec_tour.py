"""``metamesh demo`` runs and shows what each codec step produced."""

import io

from metamesh.demo import run_demo


def test_demo_walks_both_codecs() -> None:
    out = io.StringIO()
    assert run_demo(out) == 0
    text = out.getvalue()
    assert "method=sayHello" in text and "x-canary=true" in text
    assert "unchanged without mutation: True" in text
    assert "heartbeat 99 answered: HEARTBEAT id=99" in text
    assert "7 -> 1000001" in text
    assert "service=Calc" in text and "counted: 1" in text
    assert "tenant=blue, x-canary=1" in text
