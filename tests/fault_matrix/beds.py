"""The testbeds of the fault matrix: each a fake on 127.0.0.1 that the `omnibed` command uses.

A bed starts its fake, writes the credentials and settings that point omnibed at it (with
client timeouts of one second, so that a late answer is late after `LATE` seconds), and
says which request each step of a reservation makes on the testbed, so that a fault can be
aimed at that step.
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
from omnibed.core.ledger import Ledger
from tests.fakes.faults import Faults
from tests.fakes.grid5000 import FakeGrid5000
from tests.fakes.openstack import FakeOpenStack
from tests.fakes.protogeni import AM_PATH, PKI, FakeProtoGENI

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
        return subprocess.Popen([OMNIBED, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

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
def grid5000(tmp_path: Path) -> Iterator[Bed]:
    with FakeGrid5000(step=0.1) as fake:
        home = tmp_path / "home"
        config = fake.write_config(tmp_path / "python-grid5000.yaml", timeout=CLIENT_TIMEOUT)
        env = {**_base_env(home), "OMNIBED_GRID5000_CONFIG": str(config)}
        yield Bed("grid5000", home, env, fake, ["poll=0.1"], {
            "reserve": Target("POST", r"/sites/\w+/jobs$"),
            "wait": Target("GET", r"/sites/\w+/jobs/\d+$"),
            "extend": Target("POST", r"/jobs/\d+/walltime$"),
            "release": Target("DELETE", r"/jobs/\d+$"),
        })


@contextmanager
def cloudlab(tmp_path: Path, pki: PKI) -> Iterator[Bed]:
    with FakeProtoGENI(pki) as fake:
        home = tmp_path / "home"
        fake.write_config(home / "providers" / "cloudlab", poll=0.05, timeout=CLIENT_TIMEOUT)
        env = {**_base_env(home), "OMNIBED_CLOUDLAB_PASSPHRASE": pki.passphrase}
        yield Bed("cloudlab", home, env, fake, [], {
            "reserve": Target("CreateSliver", AM_PATH),
            "wait": Target("SliverStatus", AM_PATH, skip=1),  # reserve reads it once
            "snapshot": Target("CreateImage", AM_PATH),
            "extend": Target("RenewSliver", AM_PATH),
            "release": Target("DeleteSliver", AM_PATH),
        })


CLOUDS_YAML = """\
clouds:
  fake-chameleon:
    auth_type: v3applicationcredential
    auth:
      auth_url: {auth_url}
      application_credential_id: appcred
      application_credential_secret: appsecret
    interface: public
    identity_api_version: 3
"""


@contextmanager
def chameleon(tmp_path: Path) -> Iterator[Bed]:
    with FakeOpenStack() as fake:
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
        }, setup_options={"snapshot": [*options, "site=KVM@TACC"]})


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
        """Reservation records and namespaces of every reservation met so far."""
        ids = self._ids()
        found = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True)
        namespaces = [n["name"] for n in json.loads(found.stdout or "[]")]
        return [*(f"record {path.parent.name}"
                  for path in self.state_dir.glob("*/reservation.json")),
                *(f"netns {name}" for name in namespaces if name.startswith(tuple(ids)))]

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
