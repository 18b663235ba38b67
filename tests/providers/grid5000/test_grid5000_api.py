"""The Grid'5000 provider through the real python-grid5000 client against the fake API."""

from __future__ import annotations

import inspect
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grid5000.exceptions as g5k
import pytest

from omnibed.core.errors import (
    CredentialsError,
    OmnibedError,
    ProviderError,
    ProviderTimeout,
    ReservationError,
    UsageError,
)
from omnibed.core.login import Login
from omnibed.core.types import ReservationRequest, ReservationState
from omnibed.providers.grid5000 import Grid5000Provider
from omnibed.providers.grid5000._errors import map_errors
from tests.fakes.grid5000 import FakeGrid5000

NANCY = {"site": "nancy", "cluster": "gros", "poll": "0.05"}


def ask(name: str, nodes: int = 2, **kwargs: object) -> ReservationRequest:
    options = {**NANCY, **kwargs.pop("extra", {})}  # type: ignore[dict-item]
    return ReservationRequest(name=name, nodes=nodes, duration=timedelta(hours=1),
                              extra=options, **kwargs)  # type: ignore[arg-type]


def posts(fake: FakeGrid5000, suffix: str) -> list[dict]:
    return [body for method, path, body in fake.requests
            if method == "POST" and path.endswith(suffix)]


def test_reserve_wait_list_extend_release(provider: Grid5000Provider, fake: FakeGrid5000):
    reservation = provider.reserve(ask("g5k-flow", extra_nics=1))
    assert posts(fake, "/sites/nancy/jobs") == [{
        "name": "g5k-flow", "command": "sleep 31536000", "types": [],
        "resources": "{cluster='gros'}/nodes=2+{type='kavlan'}/vlan=1,walltime=1:00:00"}]
    assert reservation.state is ReservationState.WAITING
    lines: list[str] = []
    ready = provider.wait(reservation, timeout=60, progress=lines.append)
    assert ready.state is ReservationState.READY
    assert [line.rsplit(": ", 1)[1] for line in lines[:3]] == ["waiting", "launching", "running"]
    assert "putting 2 extra NIC(s) in KaVLAN 4" in lines
    assert posts(fake, "/sites/nancy/vlans/4/nodes") == [
        ["gros-1-eth1.nancy.grid5000.fr", "gros-2-eth1.nancy.grid5000.fr"]]

    nodes = provider.list_nodes(ready)
    assert [n.id for n in nodes] == ["gros-1.nancy.grid5000.fr", "gros-2.nancy.grid5000.fr"]
    assert [n.id for n in provider.list_nodes(ready)] == [n.id for n in nodes]
    jump = nodes[0].ssh.jumps[0]  # not inside Grid'5000: through the access machine
    assert (jump.host, jump.user, nodes[0].ssh.user) == ("access.grid5000.fr", "alice", "alice")

    nowhere = Login(Path("/nonexistent/id_ed25519"), "ssh-ed25519 AAAA", Path("/nonexistent/kh"))
    nics = provider.nic_capabilities(ready, nodes[1], nowhere)  # from the API only
    assert [(n.name, n.role.value, n.foreign_mac.value) for n in nics] == [
        ("eno1", "control", "unknown"), ("eno2", "extra", "yes")]
    assert nics[1].addresses == ("10.16.1.1",)  # gros eth1 address in kavlan-4 (reference API)

    longer = provider.extend(ready, ready.end + timedelta(minutes=30))
    assert longer.end - ready.end == timedelta(minutes=30)
    assert posts(fake, "/walltime") == [{"walltime": "+0:30:00"}]

    provider.release(longer)
    assert fake.live_jobs() == []
    provider.release(longer)  # idempotent: the job is already over
    assert provider.find("g5k-flow") is None


def test_reserving_twice_under_one_name_reuses_the_job(provider, fake):
    first = provider.reserve(ask("g5k-twice"))
    second = provider.reserve(ask("g5k-twice"))
    assert second.id == first.id
    assert len(posts(fake, "/jobs")) == 1
    assert Grid5000Provider(provider.state_dir).find("g5k-twice").id == first.id


def test_a_job_recorded_by_an_earlier_omnibed_is_still_found_and_released(provider, fake):
    """Records kept in `jobs/` before the tables were named `reservations/` are not lost."""
    reservation = provider.reserve(ask("g5k-old"))
    (provider.state_dir / "jobs").mkdir()
    (provider.state_dir / "reservations" / "g5k-old.json").rename(
        provider.state_dir / "jobs" / "g5k-old.json")
    upgraded = Grid5000Provider(provider.state_dir)
    assert upgraded.find("g5k-old").id == reservation.id
    upgraded.release(upgraded.find("g5k-old"))
    assert fake.live_jobs() == [] and upgraded.find("g5k-old") is None


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/Chicago"])
@pytest.mark.parametrize(("start", "paris"), [
    (datetime(2030, 3, 31, 0, 30, tzinfo=UTC), "2030-03-31 01:30:00"),  # before the DST change
    (datetime(2030, 3, 31, 1, 30, tzinfo=UTC), "2030-03-31 03:30:00"),  # after it
    (datetime(2030, 10, 27, 0, 30, tzinfo=UTC), "2030-10-27 02:30:00"),  # CEST, last hour
    (datetime(2030, 10, 27, 1, 30, tzinfo=UTC), "2030-10-27 02:30:00"),  # CET, same wall clock
])
def test_advance_start_is_sent_as_paris_time(provider, fake, monkeypatch, zone, start, paris):
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        reservation = provider.reserve(ask(f"g5k-at-{zone.replace('/', '-')}", start=start))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert posts(fake, "/jobs")[0]["reservation"] == paris
    assert reservation.state is ReservationState.WAITING
    provider.release(reservation)


@pytest.mark.parametrize("zone", ["UTC", "America/Chicago"])
def test_could_run_at_becomes_retry_at_in_utc(provider, fake, monkeypatch, zone):
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    fake.faults.fail("POST", r"/jobs$", status=400, message="Reservation not valid --> KO "
                     "(This reservation could run at 2030-03-31 03:30:00)")
    try:
        with pytest.raises(ReservationError) as caught:
            provider.reserve(ask("g5k-later", start=datetime(2030, 3, 31, 0, 0, tzinfo=UTC)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert caught.value.retry_at == datetime(2030, 3, 31, 1, 30, tzinfo=UTC)
    assert "could run at" in caught.value.testbed_message
    assert fake.live_jobs() == []


def test_oar_error_state_raises_with_oar_message(provider, fake):
    fake.error_next_job("[ADMISSION RULE] not enough resources on gros")
    reservation = provider.reserve(ask("g5k-broken"))
    with pytest.raises(ProviderError, match="ADMISSION RULE") as caught:
        provider.wait(reservation, timeout=60)
    assert caught.value.testbed_message == "[ADMISSION RULE] not enough resources on gros"


def test_wait_times_out(provider, fake):
    reservation = provider.reserve(ask("g5k-slow", start=datetime.now(UTC) + timedelta(days=1)))
    with pytest.raises(ProviderTimeout, match="still waiting"):
        provider.wait(reservation, timeout=0.3)
    provider.release(reservation)
    assert fake.live_jobs() == []


def test_wrong_password_names_the_file(provider, fake, tmp_path, monkeypatch):
    config = fake.write_config(tmp_path / "wrong.yaml", password="not-it")
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(config))
    with pytest.raises(CredentialsError, match="HTTP 401") as caught:
        Grid5000Provider(provider.state_dir).reserve(ask("g5k-401"))
    assert caught.value.source == str(config)
    assert str(config) in str(caught.value)
    assert "not-it" not in str(caught.value)
    assert fake.live_jobs() == []


@pytest.mark.parametrize("problem", ["missing", "world-readable", "no-password"])
def test_credentials_file_problems_name_the_file(provider, tmp_path, monkeypatch, problem):
    config = tmp_path / "g5k.yaml"
    if problem != "missing":
        config.write_text("username: alice\n" + ("password: x\n" if problem != "no-password"
                                                 else ""))
        config.chmod(0o644 if problem == "world-readable" else 0o600)
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(config))
    with pytest.raises(CredentialsError) as caught:
        Grid5000Provider(provider.state_dir).reserve(ask(f"g5k-{problem}"))
    assert caught.value.source == str(config)
    assert str(config) in str(caught.value)


def test_malformed_credentials_file_is_named_without_quoting_the_password(
    provider, tmp_path, monkeypatch
):
    config = tmp_path / "g5k.yaml"
    config.write_text('username: alice\npassword: "s3cret-unclosed\n')
    config.chmod(0o600)
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(config))
    with pytest.raises(CredentialsError, match="not valid YAML") as caught:
        Grid5000Provider(provider.state_dir).reserve(ask("g5k-yaml"))
    assert str(config) in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_http_500_on_submit_is_a_provider_error_and_leaves_no_job(provider, fake):
    fake.faults.fail("POST", r"/jobs$", message="OAR database unreachable")
    with pytest.raises(ProviderError, match="HTTP 500.*OAR database unreachable"):
        provider.reserve(ask("g5k-500"))
    assert fake.live_jobs() == []


@pytest.mark.parametrize("status", [400, 500])
def test_a_refused_reserve_leaves_no_job_record(provider, fake, status):
    fake.faults.fail("POST", r"/jobs$", status=status, message="refused")
    with pytest.raises(ProviderError):
        provider.reserve(ask("g5k-norecord"))
    assert list(provider.state_dir.glob("reservations/*.json")) == []
    assert provider.find("g5k-norecord") is None


def test_an_unanswered_submit_leaves_no_job_record(provider, fake, tmp_path, monkeypatch):
    config = fake.write_config(tmp_path / "impatient.yaml", timeout=0.5)
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(config))
    fake.faults.delay("POST", r"/jobs$", 2.0)
    with pytest.raises(ProviderError):
        Grid5000Provider(provider.state_dir).reserve(ask("g5k-lostrecord"))
    assert fake.live_jobs() == []
    assert list(provider.state_dir.glob("reservations/*.json")) == []


def test_a_release_whose_answer_is_lost_is_done(provider, fake, tmp_path, monkeypatch):
    reservation = provider.wait(provider.reserve(ask("g5k-lostdelete")), timeout=60)
    config = fake.write_config(tmp_path / "impatient.yaml", timeout=0.5)
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(config))
    fake.faults.delay("DELETE", r"/jobs/\d+$", 2.0)  # deleted, answered too late
    Grid5000Provider(provider.state_dir).release(reservation)
    assert fake.live_jobs() == []
    assert list(provider.state_dir.glob("reservations/*.json")) == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_server_error_says_to_retry_later(provider, fake, status):
    fake.faults.fail("POST", r"/jobs$", status=status, message="OAR is down")
    with pytest.raises(ProviderError, match="retry"):
        provider.reserve(ask("g5k-5xx"))


def test_a_transient_500_on_a_read_is_retried_by_the_client(provider, fake):
    reservation = provider.reserve(ask("g5k-retry"))
    fake.faults.fail("GET", r"/jobs/\d+$", message="hiccup")
    assert provider.wait(reservation, timeout=60).state is ReservationState.READY
    provider.release(reservation)


def test_an_unanswered_submit_leaves_no_job(provider, fake, tmp_path, monkeypatch):
    config = fake.write_config(tmp_path / "impatient.yaml", timeout=0.5)
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(config))
    fake.faults.delay("POST", r"/jobs$", 2.0)  # the job is made, the answer comes too late
    with pytest.raises(ProviderError, match="did not answer"):
        Grid5000Provider(provider.state_dir).reserve(ask("g5k-lost"))
    assert len(fake.jobs) == 1
    assert fake.live_jobs() == []


def test_release_of_a_job_the_api_forgot_is_fine(provider, fake):
    reservation = provider.reserve(ask("g5k-gone"))
    fake.jobs.clear()
    provider.release(reservation)
    provider.release(reservation)


def test_unknown_option_is_a_usage_error(provider, fake):
    with pytest.raises(UsageError, match="colour"):
        provider.reserve(ask("g5k-opt", extra={"colour": "blue"}))
    assert fake.requests == []


def test_every_sdk_error_class_is_mapped():
    classes = [c for _, c in inspect.getmembers(g5k, inspect.isclass)
               if issubclass(c, g5k.Grid5000Error)]
    assert len(classes) >= 10
    for cls in classes:
        with pytest.raises(OmnibedError):
            with map_errors("test", "/cfg", "http://x"):
                raise cls("boom", 418)


def test_doctor_reports_the_credentials_file(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(tmp_path / "absent.yaml"))
    checks = Grid5000Provider.doctor(tmp_path)
    assert [c.ok for c in checks] == [True, False]
    assert "absent.yaml" in checks[1].what
    monkeypatch.setenv("OMNIBED_GRID5000_CONFIG", str(fake.write_config(tmp_path / "ok.yaml")))
    assert all(c.ok for c in Grid5000Provider.doctor(tmp_path))


def test_state_records_hold_no_password(provider, fake):
    provider.reserve(ask("g5k-records"))
    for path in provider.state_dir.rglob("*"):
        if path.is_file():
            assert fake.password not in path.read_text()
    record = json.loads((provider.state_dir / "reservations" / "g5k-records.json").read_text())
    assert (record["site"], record["uid"]) == ("nancy", "4001")
