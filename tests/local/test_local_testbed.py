"""The local testbed for real: namespaces, bridges, sshd, raw frames (root only)."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.core import ssh
from omnibed.core.errors import ReservationError, ReservationNotFound, UsageError
from omnibed.core.login import Login
from omnibed.core.types import (
    NicRole,
    Reservation,
    ReservationRequest,
    ReservationState,
    Tri,
)
from omnibed.providers.local import LocalProvider
from tests.local.support import frames_seen, leftovers, needs_root, netns_pids, run_as_root

pytestmark = [pytest.mark.root, needs_root]

# profile -> (foreign MACs pass, multicast passes, extra NICs it can give)
PROFILES = {
    "baremetal": (True, True, 1),
    "xen": (False, True, 1),
    "kvm": (False, True, 0),
    "nomcast": (False, False, 1),
}
BROADCAST = "ff:ff:ff:ff:ff:ff"
MULTICAST = "01:00:5e:01:02:03"
FOREIGN_SRC = "02:ee:ee:00:00:01"
FOREIGN_DST = "02:ee:ee:00:00:02"


@dataclass
class Testbed:
    __test__ = False

    profile: str
    provider: LocalProvider
    reservation: Reservation
    key: ssh.KeyPair
    known_hosts: Path


@pytest.fixture(scope="module", params=list(PROFILES))
def testbed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Testbed]:
    """Three pnodes on one profile (with the extra NIC where the profile allows it)."""
    profile = request.param
    root = tmp_path_factory.mktemp(f"local-{profile}")
    provider = LocalProvider(root / "state")
    key = ssh.ensure_keypair(root / "keys")
    reservation = provider.reserve(
        ReservationRequest(
            name=f"t-{profile}-{uuid.uuid4().hex[:6]}", nodes=3, duration=timedelta(hours=1),
            extra_nics=PROFILES[profile][2], public_key=key.public_openssh,
            extra={"profile": profile},
        )
    )
    try:
        yield Testbed(profile, provider, reservation, key, root / "known_hosts")
    finally:
        provider.release(reservation)


def test_root_over_real_ssh_on_every_pnode(testbed: Testbed) -> None:
    results = run_as_root(
        testbed.provider, testbed.reservation, testbed.key, "id -u", testbed.known_hosts
    )
    assert sorted(results) == ["pnode-1", "pnode-2", "pnode-3"]
    for node, result in results.items():
        assert (result.exit_status, result.stdout.strip()) == (0, "0"), (node, result.stderr)


def test_pnodes_reach_each_other_over_the_underlay(testbed: Testbed) -> None:
    """ARP and unicast IP between pnodes work under every profile (read a peer's SSH banner)."""
    nodes = testbed.provider.list_nodes(testbed.reservation)
    peers = " ".join(node.ssh.host for node in nodes)
    command = (
        f"for peer in {peers}; do timeout 10 bash -c "
        "'exec 3<>/dev/tcp/'$peer'/22 && head -c 4 <&3' || echo unreachable; echo; done"
    )
    results = run_as_root(
        testbed.provider, testbed.reservation, testbed.key, command, testbed.known_hosts
    )
    for node, result in results.items():
        assert result.stdout.split() == ["SSH-"] * len(nodes), (node, result.stdout)


def test_wait_find_and_nodes(testbed: Testbed) -> None:
    provider, reservation = testbed.provider, testbed.reservation
    said: list[str] = []
    ready = provider.wait(reservation, timeout=5, progress=said.append)
    assert ready.state is ReservationState.READY and said
    assert provider.find(reservation.name) == ready
    nodes = provider.list_nodes(reservation)
    assert [node.id for node in nodes] == [node.id for node in provider.list_nodes(ready)]
    assert len({node.ssh.host for node in nodes}) == 3
    for node in nodes:
        assert node.ssh.port == 22 and node.ssh.user == "root"
        assert node.addresses == (node.ssh.host,)
        assert node.extra["netns"].startswith(reservation.id)
        assert (node.arch, node.site) == (os.uname().machine, "local")
        assert node.hardware == ready.extra["profile"]


def test_nics_report_what_the_profile_does(testbed: Testbed) -> None:
    foreign, multicast, extra = PROFILES[testbed.profile]
    for node in testbed.provider.list_nodes(testbed.reservation):
        nics = testbed.provider.nic_capabilities(
            testbed.reservation, node, Login.of(testbed.key, testbed.known_hosts))
        assert [nic.role for nic in nics] == [NicRole.CONTROL] + [NicRole.EXTRA] * extra
        control = nics[0]
        assert control.name == "eth0" and control.mtu == 1500
        assert control.addresses == (f"{node.ssh.host}/24",)
        assert control.foreign_mac is (Tri.YES if foreign else Tri.NO)
        assert control.multicast is (Tri.YES if multicast else Tri.NO)
        if extra:
            assert (nics[1].name, nics[1].foreign_mac, nics[1].multicast) == (
                "eth1", Tri.YES, Tri.YES
            )


def _probe(testbed: Testbed, interface: str) -> tuple[set[str], list]:
    """Send the probe frames from pnode-1 to pnode-2 on `interface`; return what arrived."""
    provider, reservation = testbed.provider, testbed.reservation
    sender, receiver = provider.list_nodes(reservation)[:2]
    login = Login.of(testbed.key, testbed.known_hosts)
    nics = [
        {nic.name: nic for nic in provider.nic_capabilities(reservation, node, login)}[interface]
        for node in (sender, receiver)
    ]
    mine, theirs = nics[0].mac, nics[1].mac
    frames = [
        (mine, BROADCAST, "broadcast"),
        (FOREIGN_SRC, theirs, "foreign-src"),
        (mine, FOREIGN_DST, "foreign-dst"),
        (mine, MULTICAST, "multicast"),
        (mine, theirs, "end"),
    ]
    seen = frames_seen(sender.extra["netns"], receiver.extra["netns"], interface, frames)
    return set(seen), nics


def test_control_nic_passes_frames_as_the_profile_says(testbed: Testbed) -> None:
    foreign, multicast, _ = PROFILES[testbed.profile]
    seen, nics = _probe(testbed, "eth0")
    expected = {"broadcast", "end"}
    expected |= {"foreign-src", "foreign-dst"} if foreign else set()
    expected |= {"multicast"} if multicast else set()
    assert seen == expected
    # and what nic_capabilities reports is what the switch really does
    assert nics[1].foreign_mac is (Tri.YES if {"foreign-src", "foreign-dst"} <= seen else Tri.NO)
    assert nics[1].multicast is (Tri.YES if "multicast" in seen else Tri.NO)


def test_extra_nic_is_plain_l2(testbed: Testbed) -> None:
    if not PROFILES[testbed.profile][2]:
        pytest.skip(f"the {testbed.profile} profile has no extra NIC")
    seen, _ = _probe(testbed, "eth1")
    assert seen == {"broadcast", "foreign-src", "foreign-dst", "multicast", "end"}


def test_release_leaves_nothing_even_from_the_reservation_alone(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair,
    tmp_path: Path,
) -> None:
    kept = reserve(nodes=2, extra_nics=1, profile="xen")
    gone = reserve(nodes=2, extra_nics=1, profile="xen")
    # a user's processes outliving their SSH session: one in the pnode's namespace, one
    # that left it for a namespace of its own (as the emulator's vnodes do)
    command = (
        "setsid sleep 600 </dev/null >/dev/null 2>&1 & "
        "unshare --net setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!"
    )
    pids = {}
    for reservation in (kept, gone):
        results = run_as_root(provider, reservation, keypair, command, tmp_path / "kh")
        escaped = {int(result.stdout.strip()) for result in results.values()}
        assert len(escaped) == 2
        pids[reservation.id] = netns_pids(reservation) | escaped
        assert len(pids[reservation.id]) >= 6  # 2 sshd, 2 sleep, 2 escaped sleep at least
    assert leftovers(kept, provider.state_dir, pids[kept.id])  # the check sees them

    # one released by a fresh provider, one with its state file lost (only the Reservation)
    LocalProvider(provider.state_dir).release(kept)
    (provider.state_dir / gone.id / "reservation.json").unlink()
    LocalProvider(provider.state_dir).release(gone)

    for reservation in (kept, gone):
        assert leftovers(reservation, provider.state_dir, pids[reservation.id]) == []
        assert provider.find(reservation.name) is None
        provider.release(reservation)  # idempotent
        with pytest.raises(ReservationNotFound):
            provider.wait(reservation, timeout=1)


def test_host_enters_namespaces_made_on_a_pnode_and_hostnames_differ(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair,
    tmp_path: Path,
) -> None:
    """A pnode shares the host's /run/netns (its sessions' named namespaces, e.g. the
    emulator's vnodes, are the host's too) but has a hostname of its own."""
    host_name = socket.gethostname()
    vnode, unrelated = (f"lt-{uuid.uuid4().hex[:8]}" for _ in range(2))
    subprocess.run(["ip", "netns", "add", unrelated], check=True)
    try:
        reservation = reserve(nodes=2)
        nodes = provider.list_nodes(reservation)
        names = run_as_root(provider, reservation, keypair, "hostname", tmp_path / "kh")
        assert {node: result.stdout.strip() for node, result in names.items()} == {
            node.id: node.hostname for node in nodes
        }
        assert len({node.hostname for node in nodes} | {host_name}) == 3
        assert socket.gethostname() == host_name

        # on pnode-1, a named namespace (mounted under /run/netns as the agent does) with a
        # veth into the pnode: the host can enter it
        endpoint = provider.root_access(reservation, nodes[0],
                                        Login.of(keypair, tmp_path / "kh"))
        made = ssh.run(
            endpoint,
            f"ip netns add {vnode} && ip link add lt0 type veth peer name lt1 netns {vnode} "
            f"&& ip -n {vnode} addr add 192.0.2.1/24 dev lt1",
            tmp_path / "kh",
        )
        assert made.exit_status == 0, made.stderr
        inside = subprocess.run(["ip", "netns", "exec", vnode, "ip", "-br", "addr"],
                                capture_output=True, text=True)
        assert inside.returncode == 0, inside.stderr
        assert "192.0.2.1/24" in inside.stdout

        pids = netns_pids(reservation)
        provider.release(reservation)  # the vnode goes with the pnode it hangs off
        assert leftovers(reservation, provider.state_dir, pids) == []
        assert vnode not in os.listdir("/run/netns")
        assert unrelated in os.listdir("/run/netns")  # not reachable from a pnode: kept
    finally:
        subprocess.run(["ip", "netns", "del", unrelated], check=False)
        subprocess.run(["ip", "netns", "del", vnode], check=False, stderr=subprocess.DEVNULL)


def test_snapshot_seeds_a_later_reservation(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair,
    tmp_path: Path,
) -> None:
    first = reserve(nodes=1)
    token = uuid.uuid4().hex
    write = run_as_root(
        provider, first, keypair,
        f'mkdir -p "$OMNIBED_NODE_DIR/etc" && echo {token} > "$OMNIBED_NODE_DIR/etc/token"',
        tmp_path / "kh1",
    )
    assert write["pnode-1"].exit_status == 0, write["pnode-1"].stderr
    image = f"img-{token[:8]}"
    node = provider.list_nodes(first)[0]
    assert provider.snapshot(first, node, image, str(keypair.private_path)) == image

    second = reserve(nodes=2, image=image)
    read = run_as_root(provider, second, keypair, 'cat "$OMNIBED_NODE_DIR/etc/token"',
                       tmp_path / "kh2")
    assert {name: result.stdout.strip() for name, result in read.items()} == {
        "pnode-1": token, "pnode-2": token
    }
    with pytest.raises(UsageError, match=image):  # the message lists the images there are
        reserve(nodes=1, image="no-such-image")


def test_same_name_reuses_and_extend_moves_the_end(
    provider: LocalProvider, reserve: Callable[..., Reservation], keypair: ssh.KeyPair
) -> None:
    reservation = reserve(nodes=1)
    again = provider.reserve(
        ReservationRequest(name=reservation.name, nodes=1, duration=timedelta(hours=1),
                           public_key=keypair.public_openssh)
    )
    assert again.id == reservation.id
    later = reservation.end + timedelta(hours=2)
    assert provider.extend(reservation, later).end == later
    found = provider.find(reservation.name)
    assert found is not None and found.end == later


def test_a_failing_step_undoes_everything(provider: LocalProvider, keypair: ssh.KeyPair) -> None:
    images = provider.state_dir / "images"
    images.mkdir(parents=True)
    (images / "broken.tar.gz").write_bytes(b"this is not a tar archive")  # fails mid-build
    name = f"t-broken-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ReservationError) as failed:
        provider.reserve(
            ReservationRequest(name=name, nodes=2, duration=timedelta(hours=1),
                               public_key=keypair.public_openssh,
                               extra={"image": "broken", "profile": "xen"})
        )
    reservation_id = str(failed.value).split("(")[1].split(")")[0]
    assert reservation_id.startswith("obl")
    assert [p.name for p in provider.state_dir.iterdir()] == ["images"]
    assert provider.find(name) is None
    assert not [n for n in os.listdir("/run/netns") if n.startswith(reservation_id)]
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(reservation_id)]


def test_not_root_is_refused_before_anything(tmp_path: Path) -> None:
    """A forked child drops to uid/gid 65534 (nobody) and asks for a reservation."""
    state_dir = tmp_path / "state"
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        message, status = "no error", 1
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            LocalProvider(state_dir).reserve(
                ReservationRequest(name="x", nodes=1, duration=timedelta(hours=1))
            )
        except UsageError as error:
            message, status = str(error), 2
        except BaseException as error:
            message = repr(error)
        finally:
            os.write(write_end, message.encode())
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    _, wait_status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 2, message
    assert message == "the local testbed needs root: run omnibed with sudo"
    assert not state_dir.exists()


def test_doctor_reports_root_and_tools(tmp_path: Path) -> None:
    checks = {check.what: check for check in LocalProvider.doctor(tmp_path)}
    assert checks["running as root"].ok
    assert checks["/usr/sbin/sshd"].ok
    assert checks["`ip` command"].ok and checks["`bridge` command"].ok
    assert checks["`unshare` command"].ok and checks["`pivot_root` command"].ok
    assert checks["overlayfs (each pnode's own root filesystem)"].ok
