"""The demo's packaged manifests, filled in as the demo fills them, pass ``metamesh validate``."""

from __future__ import annotations

import io
from pathlib import Path
from string import Template

import pytest

from metamesh.api.validate import report
from metamesh.demo.mesh import manifest
from metamesh.demo.steps import STEPS, Step

VALUES = {
    "thrift_address": "127.0.10.1",
    "thrift_port": 9090,
    "dubbo_address": "127.0.10.2",
    "dubbo_port": 20880,
    **{f"{p}_{v}_host": "127.0.20.9" for p in ("thrift", "dubbo") for v in ("v1", "v2")},
    **{f"{p}_{v}_port": 40000 for p in ("thrift", "dubbo") for v in ("v1", "v2")},
}


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.manifest)
def test_services_and_each_step_validate(step: Step, tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(Template(manifest("services.yaml")).substitute(VALUES))
    (tmp_path / "metarouter.yaml").write_text(manifest(step.manifest))
    out = io.StringIO()
    assert report([str(tmp_path)], out, default_namespace="default") == 0, out.getvalue()
