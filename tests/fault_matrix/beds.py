"""The testbeds of the fault matrix: each a fake on 127.0.0.1 that the `omnibed` command uses.

A bed starts its fake, writes the credentials and settings that point omnibed at it (with
client timeouts of one second, so that a late answer is late after `LATE` seconds), and
says which request each step of a reservation makes on the testbed, so that a fault can be
aimed at that step. With `nodes=True`, the fake's nodes are real sshd servers (network
namespaces for CloudLab and Chameleon, sshd on 127.0.0.1 behind a fake access machine for
Grid'5000), for the steps that go over SSH: `sshd_of(name)` is the sshd of a reservation's
first node, which a cell kills to drop the node's connections.

A local command has no request to aim at: `kill_at(syscall, path)` makes the next command
run under strace, which SIGKILLs it when it makes that system call on that path (e.g. when
it opens a pnode's authorized_keys during root access).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from omnibed.api import Omnibed
from omnibed.core import ssh
from omnibed.core.ledger import Ledger
from omnibed.providers.grid5000.provider import HOSTS_FILE
from omnibed.providers.local import cgroups
from tests.fakes.faults import Faults
from tests.fakes.grid5000 import FakeGrid5000, G5kSSHD, write_tools
from tests.fakes.openstack import FakeOpenStack
from tests.fakes.protogeni import AM_PATH, PKI, FakeProtoGENI
from tests.fakes.protogeni_nodes import SSHNodes
from tests.fakes.sshd import FakeSSHD
from tests.providers.chameleon.nodes import NetnsNodes
from tests.providers.chameleon.support import CLOUDS_YAML

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
CLIENT_TIMEOUT = 1.0  # seconds every testbed client waits for one answer, in these tests
LATE = 3.0  # seconds a delayed answer comes after the request (past CLIENT_TIMEOUT)


@dataclass(frozen=True)
class Target:
    """The request a step makes on the testbed: `method path`, after `skip` such requests."""

    method: str
    path: str
    skip: int = 0


@dataclass
class Bed:
    """One fake testbed and an omnibed home pointed at it."""

    testbed: str
    home: Path
    env: dict[str, str]
    fake: Any
    options: list[str]
    targets: dict[str, Target]
    setup_options: dict[str, list[str]] = field(default_factory=dict)
    node_sshd: Callable[[str, str], FakeSSHD] | None = None  # (name, node id) -> its sshd
    tools_log: Path | None = None  # Grid'5000: what the fake sudo-g5k, tgz-g5k, kaenv3 did
    prefix: list[str] = field(default_factory=list)  # what the next command runs under

    @property
    def faults(self) -> Faults:
        return self.fake.faults

    def live(self) -> list[str]:
        """What the fake testbed still holds for the user."""
        return self.fake.live()

    def ledger(self) -> list[str]:
        """The names omnibed's ledger holds."""
        if not (self.home / "ledger.sqlite").exists():
            return []
        return [entry.name for entry in Ledger(self.home / "ledger.sqlite").entries()]

    def omnibed(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([OMNIBED, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix, OMNIBED, *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kill_at(self, syscalls: str, path: Path) -> Watch:
        """Run the next command under strace, which SIGKILLs it (the omnibed process, or a
        process it spawned) on entering one of `syscalls` on `path`; the watch is set once
        it was killed there."""
        log = self.home.parent / "strace.log"
        self.prefix = ["strace", "-f", "-q", "-e", "signal=none", "-o", str(log), "-P",
                       str(path), "-e", f"trace={syscalls}", "-e",
                       f"inject={syscalls}:signal=SIGKILL"]
        return _watch(lambda: log.exists() and ") = ?" in log.read_text())  # died in it

    def sshd_of(self, name: str) -> FakeSSHD:
        """The sshd of the first node of reservation `name`."""
        assert self.node_sshd is not None, f"the {self.testbed} bed has no sshd-backed nodes"
        return self.node_sshd(name, self.first_node(name))

    def root_access_here(self, name: str) -> None:
        """Give root on every node through the Python API (the set-up of a `run` cell)."""
        with self._environment():
            Omnibed(home=self.home).root_endpoints(name)

    def reserve_args(self, name: str, step: str = "") -> list[str]:
        options = self.setup_options.get(step, self.options)
        return ["reserve", "--testbed", self.testbed, "--name", name, "--walltime", "1h",
                *(arg for option in options for arg in ("-o", option))]

    def reserve_here(self, name: str, step: str) -> None:
        """Reserve and wait through omnibed's Python API in this process (the set-up of a
        cell whose step comes later), with the same environment the command gets."""
        with self._environment():
            api = Omnibed(home=self.home)
            options = dict(o.split("=", 1) for o in self.setup_options.get(step, self.options))
            request = api.make_request(self.testbed, nodes=1, walltime=timedelta(hours=1),
                                       name=name, options=options)
            api.reserve(self.testbed, request)
            api.wait(name, timeout=60)

    def record(self, name: str) -> dict[str, Any]:
        """The local testbed's record of reservation `name`."""
        state = self.home / "providers" / "local"
        return next(record for path in state.glob("*/reservation.json")
                    if (record := json.loads(path.read_text()))["name"] == name)

    def names_of_first_node(self, name: str) -> set[str]:
        """The id and host name of the first node of reservation `name`."""
        with self._environment():
            node = Omnibed(home=self.home).nodes(name)[0]
        return {node.id, node.hostname}

    def first_node(self, name: str) -> str:
        with self._environment():
            return Omnibed(home=self.home).nodes(name)[0].id

    def release_here(self, name: str) -> None:
        """Release through the Python API in this process (what `omnibed release` does)."""
        with self._environment():
            Omnibed(home=self.home).release(name)

    @contextmanager
    def _environment(self) -> Iterator[None]:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "OMNIBED_"))}
    return {**env, "OMNIBED_HOME": str(home), "COLUMNS": "200"}


@contextmanager
def grid5000(tmp_path: Path, nodes: bool = False) -> Iterator[Bed]:
    envs = tmp_path / "environments"
    envs.mkdir()
    with FakeGrid5000(step=0.1, nodes_per_cluster=1, environments_dir=envs) as fake, \
            _g5k_machines(tmp_path, fake, envs, nodes) as (sshds, tools_log):
        home = tmp_path / "home"
        config = fake.write_config(tmp_path / "python-grid5000.yaml", timeout=CLIENT_TIMEOUT)
        env = {**_base_env(home), "OMNIBED_GRID5000_CONFIG": str(config)}
        options = ["poll=0.1", *(["site=nancy", "cluster=gros"] if nodes else [])]
        yield Bed("grid5000", home, env, fake, options, {
            "reserve": Target("POST", r"/sites/\w+/jobs$"),
            "wait": Target("GET", r"/sites/\w+/jobs/\d+$"),
            "extend": Target("POST", r"/jobs/\d+/walltime$"),
            "release": Target("DELETE", r"/jobs/\d+$"),
        }, setup_options={"snapshot": [*options, "image=debian12-min"]},
            node_sshd=lambda name, node: sshds[node], tools_log=tools_log)


@contextmanager
def _g5k_machines(tmp_path: Path, fake: FakeGrid5000, envs: Path, wanted: bool
                  ) -> Iterator[tuple[dict[str, FakeSSHD], Path]]:
    """The nancy gros node, the nancy frontend and access.grid5000.fr as real sshd (when
    `wanted`), named in the grid5000 provider's hosts file of the bed's omnibed home."""
    tools_log = tmp_path / "g5k-tools.log"
    if not wanted:
        yield {}, tools_log
        return
    tools_log.touch()
    tools = write_tools(tmp_path / "tools")
    user_key = ssh.ensure_keypair(tmp_path / "g5k-user-key")
    ssh.ensure_keypair(tmp_path / "frontend-home" / ".ssh")
    keys = [user_key.public_openssh]
    machines: dict[str, FakeSSHD] = {
        "gros-1.nancy.grid5000.fr": G5kSSHD(keys, tools, tools_log, envs),
        "nancy": G5kSSHD(keys, tools, tools_log, envs, home=tmp_path / "frontend-home"),
        "access.grid5000.fr": FakeSSHD(keys),
    }
    try:
        for machine in machines.values():
            machine.start()
        hosts = tmp_path / "home" / "providers" / "grid5000" / HOSTS_FILE
        hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        hosts.write_text(json.dumps({
            name: {"host": m.host, "port": m.port, "user": "root",
                   "key_file": str(user_key.private_path)} for name, m in machines.items()}))
        node = machines["gros-1.nancy.grid5000.fr"]
        assert isinstance(node, G5kSSHD)
        fake.node_keys["gros-1.nancy.grid5000.fr"] = node.authorized_keys_file
        yield machines, tools_log
    finally:
        for machine in machines.values():
            machine.stop()


@contextmanager
def cloudlab(tmp_path: Path, pki: PKI, nodes: bool = False) -> Iterator[Bed]:
    machines = SSHNodes() if nodes else None
    with _closing(machines), FakeProtoGENI(pki, backend=machines) as fake:
        home = tmp_path / "home"
        fake.write_config(home / "providers" / "cloudlab", poll=0.05, timeout=CLIENT_TIMEOUT)
        env = {**_base_env(home), "OMNIBED_CLOUDLAB_PASSPHRASE": pki.passphrase}
        yield Bed("cloudlab", home, env, fake, [], {
            "reserve": Target("CreateSliver", AM_PATH),
            "wait": Target("SliverStatus", AM_PATH, skip=1),  # reserve reads it once
            "snapshot": Target("CreateImage", AM_PATH),
            "extend": Target("RenewSliver", AM_PATH),
            "release": Target("DeleteSliver", AM_PATH),
        }, node_sshd=lambda name, node: _sshd(machines.node(name, node).sshd))


def _sshd(sshd: FakeSSHD | None) -> FakeSSHD:
    assert sshd is not None
    return sshd


@contextmanager
def _closing(machines: SSHNodes | NetnsNodes | None) -> Iterator[None]:
    try:
        yield
    finally:
        if machines is not None:
            machines.close()


@contextmanager
def chameleon(tmp_path: Path, nodes: bool = False) -> Iterator[Bed]:
    unix_socket = str(tmp_path / "cloud.sock")
    machines = NetnsNodes(unix_socket) if nodes else None
    with _closing(machines), FakeOpenStack(backer=machines, unix_socket=unix_socket) as fake:
        home = tmp_path / "home"
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(CLOUDS_YAML.format(auth_url=fake.auth_url))
        env = {**_base_env(home), "OS_CLIENT_CONFIG_FILE": str(clouds)}
        options = ["cloud=fake-chameleon", "poll=0.05", f"api_timeout={CLIENT_TIMEOUT:g}"]
        yield Bed("chameleon", home, env, fake, options, {
            "reserve": Target("POST", r"/reservation/v1/leases$"),
            "wait": Target("GET", r"/reservation/v1/leases/[\w-]+$"),
            "snapshot": Target("POST", r"/compute/v2.1/servers/[\w-]+/action$"),
            "extend": Target("PUT", r"/reservation/v1/leases/[\w-]+$"),
            "release": Target("DELETE", r"/reservation/v1/leases/[\w-]+$"),
        }, setup_options={"snapshot": [*options, "site=KVM@TACC"]},
            node_sshd=lambda name, node: machines.nodes[node][1])


class LocalTestbed:
    """The local testbed seen as the fakes are: what it still holds, and when a step of a
    command is under way (it has no API to inject faults into)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.seen: set[str] = set()  # every reservation id met, to find its namespaces
        self.faults = _Watches()

    def _ids(self) -> set[str]:
        self.seen |= {path.parent.name for path in self.state_dir.glob("*/reservation.json")}
        return self.seen

    def live(self) -> list[str]:
        """Reservation records and namespaces of every reservation met so far, and image
        archives left half-written."""
        ids = self._ids()
        found = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True)
        namespaces = [n["name"] for n in json.loads(found.stdout or "[]")]
        return [*(f"record {path.parent.name}"
                  for path in self.state_dir.glob("*/reservation.json")),
                *(f"netns {name}" for name in namespaces if name.startswith(tuple(ids))),
                *(f"partial image {path.name}"
                  for path in self.state_dir.glob("images/.*.tmp"))]

    def under_way(self, condition: Callable[[], bool]) -> Watch:
        """A watch whose `arrived` is set once `condition()` holds (checked every 20 ms)."""
        return self.faults.watch(lambda: (self._ids(), condition())[1])

    def kill_sshd(self, name: str) -> None:
        """Kill the sshd of every pnode of reservation `name` (a pnode whose sshd is gone)."""
        for path in self.state_dir.glob("*/reservation.json"):
            record = json.loads(path.read_text())
            if record["name"] == name:
                for node in record["nodes"]:
                    pid = int((Path(node["dir"]) / "sshd.pid").read_text())
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Watch:
    """Like a fault of the fakes: `arrived` is set once the step is under way."""

    arrived: threading.Event = field(default_factory=threading.Event)


def _watch(condition: Callable[[], bool], then: Callable[[], None] = lambda: None,
           give_up: float = 120) -> Watch:
    """A watch set once `condition()` holds (checked every 20 ms for `give_up` seconds),
    after doing `then()`."""
    watch = Watch()
    deadline = time.monotonic() + give_up

    def poll() -> None:
        while not watch.arrived.is_set() and time.monotonic() < deadline:
            if condition():
                then()
                watch.arrived.set()
            time.sleep(0.02)

    threading.Thread(target=poll, daemon=True).start()
    return watch


class _Watches:
    """Watcher threads standing in for the faults of a fake; `clear()` stops them."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def watch(self, condition: Callable[[], bool]) -> Watch:
        watch = Watch()

        def poll() -> None:
            while not self._stop.is_set() and not watch.arrived.is_set():
                if condition():
                    watch.arrived.set()
                time.sleep(0.02)

        threading.Thread(target=poll, daemon=True).start()
        return watch

    def clear(self) -> None:
        self._stop.set()


@contextmanager
def local(tmp_path: Path) -> Iterator[Bed]:
    home = tmp_path / "home"
    testbed = LocalTestbed(home / "providers" / "local")
    bed = Bed("local", home, _base_env(home), testbed, [], {})
    try:
        yield bed
    finally:  # a failed cell must not leave namespaces on this machine
        if (home / "ledger.sqlite").exists():
            for name in bed.ledger():
                bed.release_here(name)


def kill_sshd(sshd: FakeSSHD) -> None:
    """Kill a fake node's sshd and every session it forked: its connections drop."""
    cgroups.kill_all(sshd.cgroup_id)


def done() -> Watch:
    """A watch already set (the fault is in place before the step)."""
    watch = Watch()
    watch.arrived.set()
    return watch


def sshd_saw_login(sshd: FakeSSHD) -> Watch:
    """A watch set once a client logs in to `sshd` (it logs "Accepted publickey") after now."""
    before = sshd.log().count("Accepted publickey")
    return _watch(lambda: sshd.log().count("Accepted publickey") > before)


def appeared(path: Path, then: Callable[[], None] = lambda: None) -> Watch:
    """A watch set once `path` exists, after doing `then()`."""
    return _watch(path.exists, then)


def logged(log: Path, text: str, then: Callable[[], None] = lambda: None) -> Watch:
    """A watch set once `text` is in the file `log`, after doing `then()`."""
    return _watch(lambda: text in log.read_text(), then)
