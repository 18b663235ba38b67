"""The Grid'5000 provider on real Reference API records (exotic, ARM, InfiniBand, Omni-Path,
single-NIC clusters) and against a fake that behaves like OAR: jobs queue for busy nodes,
walltime changes are granted at a later scheduling pass, deleted jobs take a while to die,
job collections are paginated."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from omnibed.core.errors import ProviderTimeout, ReservationError, UsageError
from omnibed.core.login import Login
from omnibed.core.types import NicRole, ReservationRequest, ReservationState
from omnibed.providers.grid5000 import Grid5000Provider, _convert
from tests.fakes.grid5000 import FIXTURES, FakeGrid5000

NODE_FIXTURES = sorted(FIXTURES.glob("*-1.json"))


def ask(name: str, nodes: int = 1, extra_nics: int = 0, **options: str) -> ReservationRequest:
    return ReservationRequest(name=name, nodes=nodes, duration=timedelta(hours=1),
                              extra_nics=extra_nics, extra={"poll": "0.05", **options})


def job_posts(fake: FakeGrid5000) -> list[dict]:
    return [body for method, path, body in fake.requests
            if method == "POST" and path.endswith("/jobs")]


@pytest.mark.parametrize("path", NODE_FIXTURES, ids=[p.stem for p in NODE_FIXTURES])
def test_every_reference_record_gives_one_control_nic_and_only_ethernet(path: Path) -> None:
    record = json.loads(path.read_text())
    nics = _convert.nics(record)
    adapters = {a.get("name") or a["device"]: a for a in record["network_adapters"]}
    control = [n for n in nics if n.role is NicRole.CONTROL]
    assert len(control) == 1
    mounted = adapters[control[0].name]
    assert (mounted["interface"], mounted["mounted"]) == ("Ethernet", True)
    assert control[0].addresses == (mounted["ip"],)
    for nic in nics:  # InfiniBand, Omni-Path, FPGA and BMC adapters are left out
        adapter = adapters[nic.name]
        assert adapter["interface"] == "Ethernet" and not adapter.get("management")
        assert nic.mac == adapter["mac"]
        if nic.role is not NicRole.CONTROL:  # not configured on a fresh node
            assert nic.addresses == ()


@pytest.mark.parametrize("path", NODE_FIXTURES, ids=[p.stem for p in NODE_FIXTURES])
def test_every_reference_node_is_reserved_and_described_as_its_file_says(
    provider: Grid5000Provider, fake: FakeGrid5000, path: Path
) -> None:
    """Each fixture's node, reserved through the fake by its cluster: its name, SSH endpoint,
    architecture, cluster and site, and its NICs (names, MACs, roles, the control address)
    are the file's."""
    record = json.loads(path.read_text())
    cluster = record["uid"].rsplit("-", 1)[0]
    mounted = next(a for a in record["network_adapters"]
                   if a["interface"] == "Ethernet" and a.get("mounted"))
    fqdn = mounted["network_address"]
    site = fqdn.split(".")[1]
    ready = provider.wait(provider.reserve(ask(f"g5k-{cluster}", site=site, cluster=cluster)),
                          timeout=30)
    (node,) = provider.list_nodes(ready)
    assert (node.id, node.hostname) == (fqdn, record["uid"])
    assert (node.ssh.host, node.ssh.port, node.ssh.user) == (fqdn, 22, fake.username)
    assert [jump.host for jump in node.ssh.jumps] == ["access.grid5000.fr"]
    assert (node.arch, node.hardware, node.site) == (
        record["architecture"]["platform_type"], cluster, site)
    nowhere = Login(Path("/nonexistent/id_ed25519"), "ssh-ed25519 AAAA", Path("/nonexistent/kh"))
    ethernet = [a for a in record["network_adapters"] if a["interface"] == "Ethernet"
                and not a.get("management") and (a.get("mounted") or a.get("mountable"))]
    assert [(n.name, n.mac, n.role, n.addresses)
            for n in provider.nic_capabilities(ready, node, nowhere)] == [
        (a["name"], a["mac"], NicRole.CONTROL if a is mounted else NicRole.EXPERIMENT,
         (a["ip"],) if a is mounted else ()) for a in ethernet]
    provider.release(ready)


def test_an_unmounted_nic_has_no_address_although_the_reference_lists_one() -> None:
    record = json.loads((FIXTURES / "sasquatch-1.json").read_text())
    eth1 = next(a for a in record["network_adapters"] if a["device"] == "eth1")
    assert eth1["ip"] and not eth1["mounted"]
    nic = next(n for n in _convert.nics(record) if n.name == eth1["name"])
    assert nic.addresses == ()


def test_the_fake_refuses_an_exotic_cluster_without_the_exotic_type(fake: FakeGrid5000) -> None:
    body = {"name": "plain", "command": "sleep 1", "types": [],
            "resources": "{cluster='sasquatch'}/nodes=1,walltime=1:00:00"}
    answer = requests.post(f"{fake.url}/sites/grenoble/jobs", json=body,
                           auth=(fake.username, fake.password), timeout=10)
    assert answer.status_code == 400


def test_an_exotic_cluster_is_reserved_with_the_exotic_type(
    provider: Grid5000Provider, fake: FakeGrid5000
) -> None:
    reservation = provider.reserve(ask("g5k-arm", site="grenoble", cluster="sasquatch"))
    assert job_posts(fake)[-1]["types"] == ["exotic"]
    ready = provider.wait(reservation, timeout=30)
    assert ready.extra["assigned_nodes"] == ("sasquatch-1.grenoble.grid5000.fr",)
    provider.release(ready)


def test_types_option_adds_oar_job_types(provider: Grid5000Provider, fake: FakeGrid5000) -> None:
    provider.reserve(ask("g5k-types", site="grenoble", cluster="troll",
                         types="night,allow_classic_ssh"))
    assert job_posts(fake)[-1]["types"] == ["night", "allow_classic_ssh", "exotic"]


def test_bad_types_are_refused_before_submitting(provider: Grid5000Provider,
                                                 fake: FakeGrid5000) -> None:
    with pytest.raises(UsageError, match="types"):
        provider.reserve(ask("g5k-badtypes", types="night;rm"))
    assert job_posts(fake) == []


def test_extra_nics_on_a_single_nic_cluster_are_refused_before_any_job(
    provider: Grid5000Provider, fake: FakeGrid5000
) -> None:
    with pytest.raises(UsageError, match=r"dahu.*1 more Ethernet NIC|dahu.*no secondary"):
        provider.reserve(ask("g5k-dahu", extra_nics=1, site="grenoble", cluster="dahu"))
    assert job_posts(fake) == []
    assert provider.find("g5k-dahu") is None


def test_a_job_waits_in_the_queue_for_busy_nodes(provider: Grid5000Provider,
                                                 fake: FakeGrid5000) -> None:
    first = provider.wait(provider.reserve(ask("g5k-first", 3, site="nancy", cluster="gros")),
                          timeout=30)
    second = provider.reserve(ask("g5k-second", 3, site="nancy", cluster="gros"))
    time.sleep(3 * fake.step)
    assert provider.find("g5k-second").state is ReservationState.WAITING
    provider.release(first)
    ready = provider.wait(second, timeout=30)
    assert sorted(ready.extra["assigned_nodes"]) == [
        f"gros-{i}.nancy.grid5000.fr" for i in (1, 2, 3)]
    provider.release(ready)


def test_more_nodes_than_the_cluster_has_is_refused(provider: Grid5000Provider) -> None:
    with pytest.raises(ReservationError):
        provider.reserve(ask("g5k-toomany", 4, site="nancy", cluster="gros"))


def test_an_advance_reservation_is_placed_by_its_window_not_by_who_is_busy_now(
    provider: Grid5000Provider, fake: FakeGrid5000
) -> None:
    """OAR takes an advance reservation when its nodes are free over its whole window: busy
    now but free then is accepted; overlapping a job is refused, saying when it could run."""
    first = provider.wait(provider.reserve(ask("g5k-now", 3, site="nancy", cluster="gros")),
                          timeout=30)
    after = ReservationRequest(name="g5k-after", nodes=3, duration=timedelta(hours=1),
                               start=first.end + timedelta(minutes=10),
                               extra={"poll": "0.05", "site": "nancy", "cluster": "gros"})
    assert provider.reserve(after).state is ReservationState.WAITING
    clash = ReservationRequest(name="g5k-clash", nodes=3, duration=timedelta(hours=1),
                               start=datetime.now(UTC) + timedelta(minutes=10),
                               extra={"poll": "0.05", "site": "nancy", "cluster": "gros"})
    posts = len(job_posts(fake))
    with pytest.raises(ReservationError) as refused:
        provider.reserve(clash)
    assert len(job_posts(fake)) == posts + 1
    assert refused.value.retry_at is not None and refused.value.retry_at >= first.end
    assert provider.find("g5k-clash") is None
    assert sorted(str(uid) for uid in fake.live_jobs()) == sorted(
        [first.id, provider.find("g5k-after").id])
    provider.release(first)
    provider.release(provider.find("g5k-after"))


def test_properties_select_the_nodes(provider: Grid5000Provider, fake: FakeGrid5000) -> None:
    reservation = provider.reserve(
        ask("g5k-host", site="nancy", properties="host in ('gros-3.nancy.grid5000.fr')"))
    ready = provider.wait(reservation, timeout=30)
    assert ready.extra["assigned_nodes"] == ("gros-3.nancy.grid5000.fr",)
    provider.release(ready)


def test_extend_reports_the_end_oar_grants_later(provider: Grid5000Provider,
                                                 fake: FakeGrid5000) -> None:
    fake.walltime_grant_cap = 20 * 60  # OAR grants at most 20 more minutes
    ready = provider.wait(provider.reserve(ask("g5k-extend", site="nancy")), timeout=30)
    longer = provider.extend(ready, ready.end + timedelta(minutes=30))
    assert longer.end - ready.end == timedelta(minutes=20)
    provider.release(longer)


def test_extend_still_pending_says_so(provider: Grid5000Provider, fake: FakeGrid5000) -> None:
    fake.walltime_grant_delay = 3600  # the scheduling pass never comes during the test
    ready = provider.wait(provider.reserve(ask("g5k-pending", site="nancy", poll="0.05",
                                               extend_timeout="0.5")), timeout=30)
    with pytest.raises(ProviderTimeout, match="walltime change"):
        provider.extend(ready, ready.end + timedelta(minutes=30))
    provider.release(ready)


def test_release_while_the_job_is_still_dying(provider: Grid5000Provider,
                                              fake: FakeGrid5000) -> None:
    fake.kill_delay = 0.5
    ready = provider.wait(provider.reserve(ask("g5k-dying", site="nancy")), timeout=30)
    provider.release(ready)
    assert fake.live_jobs() == []
    provider.release(ready)
    assert provider.find("g5k-dying") is None


def test_find_reads_every_page_and_checks_name_and_owner(provider: Grid5000Provider,
                                                         fake: FakeGrid5000) -> None:
    fake.page_size = 2
    fake.filters_ignored = True  # an unfiltered collection: every user's jobs
    for index in range(5):
        fake.add_job_of("bob", f"bobs-{index}", "nancy")
    fake.add_job_of("bob", "g5k-mine", "nancy")  # another user's, same name, older
    mine = provider.reserve(ask("g5k-mine", site="nancy"))  # on the 4th page
    found = provider.find("g5k-mine")
    assert found is not None and found.id == mine.id
    provider.release(found)


def test_nodes_say_their_architecture_cluster_and_site(provider: Grid5000Provider) -> None:
    arm = provider.wait(provider.reserve(ask("g5k-archs", site="grenoble", cluster="sasquatch")),
                        timeout=30)
    node = provider.list_nodes(arm)[0]
    assert (node.arch, node.hardware, node.site) == ("aarch64", "sasquatch", "grenoble")
    assert node.to_json()["arch"] == "aarch64"
    provider.release(arm)
    x86 = provider.wait(provider.reserve(ask("g5k-archs2", 2, site="nancy", cluster="gros")),
                        timeout=30)
    assert {(n.arch, n.hardware, n.site) for n in provider.list_nodes(x86)} == {
        ("x86_64", "gros", "nancy")}
    provider.release(x86)


def test_a_job_oar_has_not_placed_yet_is_not_over_before_it_starts(
    provider: Grid5000Provider, fake: FakeGrid5000
) -> None:
    """Until OAR's first scheduling pass a job has no `scheduled_at` and `started_at` is 0:
    its start is not known, but it is not its submission (a short job left unscheduled
    longer than its walltime would look over, and `omnibed gc` would release it)."""
    fake.step = 3.0  # the scheduling pass comes late
    short = ReservationRequest(name="g5k-unplaced", nodes=1, duration=timedelta(seconds=1),
                               extra={"poll": "0.05", "site": "nancy"})
    provider.reserve(short)
    time.sleep(1.5)
    listed = provider.client.find_jobs("nancy", "g5k-unplaced", _convert.LIVE_STATES)
    assert "scheduled_at" not in listed[0] and listed[0]["started_at"] == 0
    asked = datetime.now(UTC).replace(microsecond=0)
    found = provider.find("g5k-unplaced")
    assert found is not None and found.state is ReservationState.WAITING
    assert found.start >= asked and found.end > datetime.now(UTC)
    provider.release(found)


def test_a_queued_job_starts_when_oar_predicts_it(provider: Grid5000Provider,
                                                  fake: FakeGrid5000) -> None:
    """A job queued behind a running one is placed at that job's end (`scheduled_at`)."""
    first = provider.wait(provider.reserve(ask("g5k-busy", 3, site="nancy", cluster="gros")),
                          timeout=30)
    second = provider.reserve(ask("g5k-queued", 3, site="nancy", cluster="gros"))
    time.sleep(2 * fake.step)
    queued = provider.find("g5k-queued")
    assert queued is not None and queued.state is ReservationState.WAITING
    assert abs(queued.start - first.end) < timedelta(seconds=2)
    assert queued.end - queued.start == timedelta(hours=1)
    provider.release(first)
    provider.release(second)


def test_an_advance_reservation_shows_its_start_and_an_ended_job_its_stop(
    provider: Grid5000Provider, fake: FakeGrid5000
) -> None:
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    later = ReservationRequest(name="g5k-tomorrow", nodes=1, duration=timedelta(hours=1),
                               start=start, extra={"poll": "0.05", "site": "nancy"})
    reservation = provider.reserve(later)
    found = provider.find("g5k-tomorrow")
    assert found is not None and found.state is ReservationState.WAITING
    assert (reservation.start, found.start, found.end) == (start, start,
                                                           start + timedelta(hours=1))
    provider.release(found)
    ready = provider.wait(provider.reserve(ask("g5k-stopped", site="nancy")), timeout=30)
    provider.release(ready)
    ended = provider.client.job("nancy", ready.id)
    assert ended is not None and "scheduled_at" not in ended
    view = _convert.reservation(ended, "nancy")
    assert view.end == _convert.from_epoch(ended["stopped_at"]) < ready.end
