"""The SDS protocol states, byte-free: what is sent on subscribe, ACK, NACK and rotation."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped]

from metamesh.xds.sds_state import (
    SECRET_TYPE,
    SdsDeltaState,
    SdsStreamState,
    WorkloadSecrets,
)


def secrets(n: int) -> WorkloadSecrets:
    return WorkloadSecrets(f"chain{n}".encode(), f"key{n}".encode(), b"root", str(n))


def unpack(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        out[secret.name] = secret
    return out


def request(names: list[str], version: str = "", nonce: str = "", error: str = "") -> object:
    req = discovery_pb2.DiscoveryRequest(
        type_url=SECRET_TYPE, resource_names=names, version_info=version, response_nonce=nonce
    )
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(message=error))
    return req


def test_sotw_serves_default_and_rootca_and_pushes_a_rotation() -> None:
    state = SdsStreamState()
    assert state.on_request(request(["default"])) == []  # nothing to serve yet
    [first] = state.set_secrets(secrets(1))
    got = unpack(first)
    assert list(got) == ["default"]
    assert got["default"].tls_certificate.certificate_chain.inline_bytes == b"chain1"
    assert got["default"].tls_certificate.private_key.inline_bytes == b"key1"
    assert state.on_request(request(["default"], "1", first.nonce)) == []  # ACK
    assert state.acked_version == "1"
    [second] = state.set_secrets(secrets(2))
    assert second.version_info == "2" and second.nonce != first.nonce
    assert unpack(second)["default"].tls_certificate.private_key.inline_bytes == b"key2"
    assert state.on_request(request(["default"], "1", first.nonce)) == []  # stale nonce
    assert state.on_request(request(["default"], "1", second.nonce, "bad key")) == []
    assert state.nack_error == "bad key" and state.acked_version == "1"
    [both] = state.on_request(request(["default", "ROOTCA"], "1", second.nonce))
    root = unpack(both)["ROOTCA"].validation_context.trusted_ca.inline_bytes
    assert root == b"root"


def test_sotw_reports_a_name_it_does_not_serve() -> None:
    state = SdsStreamState(secrets=secrets(1))
    [response] = state.on_request(request(["file-cert:/etc/x.pem"]))
    assert not response.resources
    assert state.unknown == {"file-cert:/etc/x.pem"}


def delta(subscribe: list[str], nonce: str = "", initial: dict[str, str] | None = None) -> object:
    return discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET_TYPE,
        resource_names_subscribe=subscribe,
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )


def test_delta_resends_only_what_changed_and_says_what_does_not_exist() -> None:
    state = SdsDeltaState(secrets=secrets(1))
    [first] = state.on_request(delta(["default", "ROOTCA", "nope"]))
    assert sorted(r.name for r in first.resources) == ["ROOTCA", "default"]
    assert list(first.removed_resources) == ["nope"]
    assert state.on_request(delta([], first.nonce)) == []
    assert state.acked_version == "1"
    [rotated] = state.set_secrets(secrets(2))
    assert [r.name for r in rotated.resources] == ["default"]  # the root did not change
    assert not rotated.removed_resources
    assert state.set_secrets(secrets(2)) == []


def test_delta_reconnect_with_current_versions_gets_an_empty_first_answer() -> None:
    old = SdsDeltaState(secrets=secrets(1))
    [sent] = old.on_request(delta(["default", "ROOTCA"]))
    held = {r.name: r.version for r in sent.resources}
    state = SdsDeltaState(secrets=secrets(1))
    [response] = state.on_request(delta(["default", "ROOTCA"], initial=held))
    assert not response.resources and not response.removed_resources
