"""The OTLP side's guard against xds-protos' older copy of the OpenTelemetry protos.

Both xds-protos and opentelemetry-proto install ``opentelemetry/proto/...``; when pip writes
xds-protos' files last, the OTLP messages the exporter writes are missing. The guard says so
with the repair command, at start (``--tracing-endpoint``), instead of a traceback from the
exporter later.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types

import opentelemetry.proto.common.v1 as common_v1
import pytest

from metamesh import cli
from metamesh.runtime import otlp
from metamesh.runtime.tracing import TracingSettings


def shadow_protos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``opentelemetry.proto.common.v1.common_pb2`` look like xds-protos' copy."""
    old = types.ModuleType("opentelemetry.proto.common.v1.common_pb2")
    old.InstrumentationLibrary = object  # type: ignore[attr-defined]  # the pre-1.0 name
    monkeypatch.setitem(sys.modules, old.__name__, old)
    monkeypatch.setattr(common_v1, "common_pb2", old)


def test_the_installed_protos_pass() -> None:
    otlp.check_otlp_protos()


def test_shadowed_protos_are_named_with_the_repair_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shadow_protos(monkeypatch)
    with pytest.raises(otlp.TracingUnavailable) as e:
        otlp.check_otlp_protos()
    assert "xds-protos" in str(e.value)
    assert "pip install --force-reinstall --no-deps 'opentelemetry-proto==" in str(e.value)


def test_the_cli_refuses_tracing_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    shadow_protos(monkeypatch)
    args = argparse.Namespace(
        tracing_endpoint="127.0.0.1:4317",
        tracing_protocol="grpc",
        tracing_sample_rate=0.5,
        tracing_errors=False,
    )
    with pytest.raises(SystemExit) as e:
        cli._tracing(args)
    assert str(e.value).startswith("metamesh: tracing: the installed opentelemetry/proto")


def test_without_tracing_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    shadow_protos(monkeypatch)
    args = argparse.Namespace(tracing_endpoint=None)
    assert cli._tracing(args) is None


@pytest.mark.parametrize("command", [["proxy", "--config", "x.yaml"], ["up", "DIR"]])
def test_the_default_export_is_otlp_http(command: list[str]) -> None:
    """OTLP/HTTP unless ``--tracing-protocol grpc``: OpenTelemetry's default, and the export
    that runs on the proxy loop (docs/telemetry.md)."""
    parser = cli.build_parser()
    args = parser.parse_args([*command, "--tracing-endpoint", "127.0.0.1:4318"])
    settings = cli._tracing(args)
    assert settings is not None and settings.protocol == "http"
    assert TracingSettings("127.0.0.1:4318").protocol == "http"
    grpc = parser.parse_args(
        [*command, "--tracing-endpoint", "h:4317", "--tracing-protocol", "grpc"]
    )
    assert cli._tracing(grpc) == TracingSettings("h:4317", "grpc")


@pytest.mark.parametrize(("protocol", "module"), [("http", "aiohttp"), ("grpc", "grpc")])
def test_the_transport_is_imported_at_start_not_by_the_first_span(
    protocol: str, module: str
) -> None:
    """Importing aiohttp takes ~90 ms of CPU: at the first sampled span it would stall the
    proxy loop; an exporter made at start has it already."""
    code = (
        "import sys, time\n"
        "from metamesh.runtime.otlp import SpanExporter\n"
        "from metamesh.runtime.tracing import TracingSettings\n"
        f"assert {module!r} not in sys.modules\n"
        f"SpanExporter(TracingSettings('127.0.0.1:1', {protocol!r}), time.monotonic())\n"
        f"assert {module!r} in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
