"""The CloudLab provider through geni-lib's real XML-RPC/TLS path against the fake aggregate."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core.errors import (
    CredentialsError,
    ProviderError,
    ProviderTimeout,
    ReservationError,
    UsageError,
)
from omnibed.core.login import Login
from omnibed.core.timeutil import utcnow
from omnibed.core.types import ReservationRequest, ReservationState
from omnibed.providers.cloudlab import CloudLabProvider
from tests.fakes.protogeni import FakeProtoGENI, NoNodes, make_pki

MAX_SLICE_LIFE = timedelta(days=3)  # as the conftest builds the fake

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxjYLMc7WmNLp0Vq1Dn2bR2Gqv5cM2xZ3bJ0bXx8kq1 res"
# CloudLab images disks and lists NICs without a login
NO_LOGIN = Login(Path("/nonexistent/id_ed25519"), KEY, Path("/nonexistent/known_hosts"))


def request(name: str, **kwargs) -> ReservationRequest:
    fields = {"nodes": 2, "duration": timedelta(hours=2), "public_key": KEY, **kwargs}
    return ReservationRequest(name=name, **fields)


def test_full_verb_set(provider: CloudLabProvider, fake: FakeProtoGENI) -> None:
    lines: list[str] = []
    reservation = provider.reserve(request("full", extra_nics=1))
    assert reservation.id == "urn:publicid:IDN+emulab.net:omnibedtest+slice+full"
    assert reservation.state is ReservationState.WAITING
    ready = provider.wait(reservation, timeout=60, progress=lines.append)
    assert ready.state is ReservationState.READY
    assert lines[-1] == "2/2 resources ready (ready)"
    nodes = provider.list_nodes(ready)
    assert [node.id for node in nodes] == ["node0", "node1"]
    assert all(node.ssh.user == "alice" and node.ssh.port == 22 for node in nodes)
    image = provider.snapshot(ready, nodes[1], "golden1", NO_LOGIN)
    assert image == "urn:publicid:IDN+utah.cloudlab.us+image+omnibedtest//golden1"
    assert fake.state.images[image]["node"] == "node1"
    assert "CreateImage" in fake.state.calls
    later = provider.extend(ready, ready.end + timedelta(hours=1))
    assert later.end > ready.end
    provider.release(ready)
    provider.release(ready)  # idempotent
    assert provider.find("full") is None
    assert fake.state.slivers == {}


def test_snapshot_is_accepted_as_image_later(provider: CloudLabProvider, fake: FakeProtoGENI):
    first = provider.wait(provider.reserve(request("snap1", nodes=1)), timeout=60)
    image = provider.snapshot(first, provider.list_nodes(first)[0], "mine", NO_LOGIN)
    second = provider.reserve(request("snap2", nodes=1, image=image))
    manifest = fake.state.slivers[second.id].manifest.decode()
    assert f'name="{image}"' in manifest
    with pytest.raises(ProviderError, match="no such image"):
        provider.reserve(request("snap3", nodes=1, image=image + "x"))
    assert provider.find("snap3") is None


def test_xen_vms_share_a_host_and_drop_foreign_macs(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    reservation = provider.wait(
        provider.reserve(request("xen", extra_nics=1, extra={"vm": "xen"})), timeout=60
    )
    nodes = provider.list_nodes(reservation)
    assert {node.ssh.host for node in nodes} == {"198.51.100.1"}
    assert len({node.ssh.port for node in nodes}) == 2
    assert all(node.extra["sliver_type"] == "emulab-xen" for node in nodes)
    # no IPv4 of their own: never the shared host's address (NICs: test_cloudlab_nodes)
    assert all("198.51.100.1" not in node.addresses for node in nodes)


def test_node_ids_come_from_client_id_not_host_names(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    reservation = provider.wait(provider.reserve(request("ids")), timeout=60)
    before = provider.list_nodes(reservation)
    assert all(node.hostname != node.ssh.host for node in before)
    fake.rename_hosts("ids", "reimaged")
    after = provider.list_nodes(reservation)
    assert [n.id for n in after] == [n.id for n in before] == ["node0", "node1"]
    assert all(a.hostname.startswith("reimaged-") for a in after)


def test_reserving_a_name_twice_reuses_the_sliver(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    first = provider.reserve(request("twice"))
    second = provider.reserve(request("twice"))
    assert first.id == second.id
    assert fake.state.calls.count("CreateSliver") == 1


def test_renew_grants_less_and_the_provider_reports_it(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    reservation = provider.wait(provider.reserve(request("renew")), timeout=60)
    asked = utcnow() + timedelta(days=10)
    extended = provider.extend(reservation, asked)
    slice_end = next(iter(fake.state.slices.values())).expires
    assert extended.end < asked
    assert extended.end == slice_end
    assert slice_end <= utcnow() + MAX_SLICE_LIFE
    assert extended.end == fake.state.slivers[reservation.id].expires
    assert extended.extra["requested_end"] == asked.isoformat()


@pytest.mark.parametrize(
    ("code", "words"),
    [(26, "not enough free nodes"), (14, "busy"), (28, "could not be mapped"),
     (25, "bandwidth"), (24, "VLAN")],
)
def test_protogeni_refusals_are_typed_and_leave_no_sliver(
    provider: CloudLabProvider, fake: FakeProtoGENI, code: int, words: str
) -> None:
    fake.inject("CreateSliver", code, f"fake refusal {code}")
    with pytest.raises(ReservationError, match=words) as caught:
        provider.reserve(request(f"fault{code}"))
    assert f"fake refusal {code}" in caught.value.testbed_message
    assert "spewlogfile" in caught.value.testbed_message
    assert fake.state.slivers == {}
    assert provider.find(f"fault{code}") is None


@pytest.mark.parametrize("method", ["CreateSliver", "RenewSliver", "DeleteSliver"])
def test_credentials_expired_mid_run_say_to_download_fresh_ones(
    provider: CloudLabProvider, fake: FakeProtoGENI, method: str
) -> None:
    if method != "CreateSliver":
        reservation = provider.wait(provider.reserve(request(f"exp{method.lower()}")),
                                    timeout=60)
    fake.faults.revoke(method)
    with pytest.raises(CredentialsError, match="fresh cloudlab.pem"):
        if method == "CreateSliver":
            provider.reserve(request("expcreate"))
        elif method == "RenewSliver":
            provider.extend(reservation, utcnow() + timedelta(hours=3))
        else:
            provider.release(reservation)
    fake.faults.clear()
    assert all(s.slice_name != "expcreate" for s in fake.state.slivers.values())


def test_an_http_error_of_the_aggregate_says_to_retry(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    fake.faults.fail("CreateSliver", status=502)
    with pytest.raises(ProviderError, match="HTTP 502.*retry") as caught:
        provider.reserve(request("http502"))
    assert not isinstance(caught.value, CredentialsError)
    assert fake.live() == []


def test_a_failed_sliver_raises_the_aggregates_error_and_is_deleted(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    fake.fail_next_sliver("pc500 failed to boot (TBFAILED)")
    reservation = provider.reserve(request("boom"))
    with pytest.raises(ProviderError, match="failed to boot") as caught:
        provider.wait(reservation, timeout=60)
    assert "TBFAILED" in caught.value.testbed_message
    assert fake.state.slivers == {}


def test_wait_times_out(pki, tmp_path: Path, passphrase: str) -> None:
    with FakeProtoGENI(pki, polls_to_ready=10**6) as slow:
        slow.write_config(tmp_path / "state")
        provider = CloudLabProvider(tmp_path / "state")
        reservation = provider.reserve(request("slow"))
        with pytest.raises(ProviderTimeout, match="is still .* after 0.3 s"):
            provider.wait(reservation, timeout=0.3)
        provider.release(reservation)


def test_each_reservation_sends_only_its_own_key(
    pki, tmp_path: Path, passphrase: str
) -> None:
    sent: dict[str, list[str]] = {}

    class Recorder(NoNodes):
        def boot(self, slice_name, client_id, xen, username, public_keys, interfaces):
            sent[slice_name] = list(public_keys)
            return super().boot(slice_name, client_id, xen, username, public_keys, interfaces)

    with FakeProtoGENI(pki, backend=Recorder()) as server:
        server.write_config(tmp_path / "state")
        provider = CloudLabProvider(tmp_path / "state")
        provider.reserve(request("one", nodes=1, public_key=KEY.replace("res", "one")))
        provider.reserve(request("two", nodes=1, public_key=KEY.replace("res", "two")))
    assert [key.split()[-1] for key in sent["one"]] == ["one"]
    assert [key.split()[-1] for key in sent["two"]] == ["two"]


def test_bad_names_and_sites_are_usage_errors(provider: CloudLabProvider) -> None:
    with pytest.raises(UsageError, match="slice"):
        provider.reserve(request("Not_A_Slice"))
    with pytest.raises(UsageError, match="site"):
        provider.reserve(request("okname", site="mars"))


def test_missing_credentials_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OMNIBED_CLOUDLAB_PASSPHRASE", raising=False)
    provider = CloudLabProvider(tmp_path / "empty")
    with pytest.raises(CredentialsError, match="Download Credentials") as caught:
        provider.reserve(request("nocreds"))
    assert caught.value.source == str(tmp_path / "empty" / "cloudlab.pem")


def test_encrypted_key_without_passphrase(state_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("OMNIBED_CLOUDLAB_PASSPHRASE", raising=False)
    with pytest.raises(CredentialsError, match="OMNIBED_CLOUDLAB_PASSPHRASE"):
        CloudLabProvider(state_dir).reserve(request("nopass"))


def test_wrong_passphrase(state_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PASSPHRASE", "not-it")
    with pytest.raises(CredentialsError, match="could not be decrypted"):
        CloudLabProvider(state_dir).reserve(request("wrongpass"))


def test_passphrase_file_must_be_private(state_dir: Path, pki, monkeypatch) -> None:
    monkeypatch.delenv("OMNIBED_CLOUDLAB_PASSPHRASE", raising=False)
    secret = state_dir / "pass"
    secret.write_text(pki.passphrase + "\n")
    secret.chmod(0o644)
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PASSPHRASE_FILE", str(secret))
    with pytest.raises(CredentialsError, match="chmod 600"):
        CloudLabProvider(state_dir).reserve(request("leaky"))
    secret.chmod(0o600)
    assert CloudLabProvider(state_dir).reserve(request("private")).name == "private"


def test_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, fake: FakeProtoGENI, monkeypatch
) -> None:
    stranger = make_pki(tmp_path / "stranger")
    state = tmp_path / "state"
    fake.write_config(state)
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PEM", str(stranger.user_pem))
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PASSPHRASE", stranger.passphrase)
    with pytest.raises(CredentialsError, match="TLS"):
        CloudLabProvider(state).reserve(request("stranger"))
    assert fake.state.slices == {}


def test_doctor_names_what_is_missing(tmp_path: Path, state_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("OMNIBED_CLOUDLAB_PASSPHRASE", raising=False)
    empty = {check.what: check for check in CloudLabProvider.doctor(tmp_path / "none")}
    missing = [check for check in empty.values() if not check.ok]
    assert any("cloudlab.pem" in check.what for check in missing)
    assert any(check.what == "CloudLab project" for check in missing)
    found = {check.what: check for check in CloudLabProvider.doctor(state_dir)}
    assert found["geni-lib importable"].ok
    assert found["CloudLab project"].ok
    assert not found["key passphrase"].ok
    monkeypatch.setenv("OMNIBED_CLOUDLAB_PASSPHRASE", "x")
    assert {c.what: c for c in CloudLabProvider.doctor(state_dir)}["key passphrase"].ok


def test_a_failure_after_create_sliver_leaves_no_sliver(
    provider: CloudLabProvider, fake: FakeProtoGENI
) -> None:
    fake.inject("SliverStatus", 2, "*** internal error while reading status")
    with pytest.raises(ProviderError, match="internal error"):
        provider.reserve(request("halfway"))
    assert "DeleteSliver" in fake.state.calls
    assert fake.state.slivers == {}
    assert provider.find("halfway") is None


def test_an_existing_geni_lib_context_json_is_used(
    pki, tmp_path: Path, fake: FakeProtoGENI, passphrase: str
) -> None:
    state = tmp_path / "state"
    fake.write_config(state)
    config = state / "config.toml"
    text = config.read_text().replace(f'pem = "{pki.user_pem}"\nproject = "omnibedtest"\n', "")
    context = tmp_path / "context.json"
    pub = tmp_path / "id.pub"
    pub.write_text(KEY.replace("res", "portalkey") + "\n")
    context.write_text(json.dumps({
        "framework": "emulab-ch2", "cert-path": str(pki.user_pem),
        "key-path": str(pki.user_pem), "user-name": "alice", "user-urn": pki.user_urn,
        "user-pubkeypath": str(pub), "project": "omnibedtest",
    }))
    config.write_text(f'context = "{context}"\n' + text)
    reservation = CloudLabProvider(state).reserve(request("ctxjson", nodes=1))
    assert reservation.id == "urn:publicid:IDN+emulab.net:omnibedtest+slice+ctxjson"
    assert "pem" not in config.read_text()
