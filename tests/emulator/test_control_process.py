"""The user's control process through the CLI, on a local reservation: started by the first
command that needs agents, reused by the next ones (same agent), private to its user, replaced
after being killed (`omnibed gc` removes the socket it left), ended when idle or when its
reservation is released."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed

pytestmark = pytest.mark.root

OMNIBED = str(Path(sys.executable).with_name("omnibed"))
PLATFORM = """
networks:
  - {name: lan, cidr: 10.79.0.0/24}
nodes:
  - name: vnode-{i}
    per_pnode: 2
    ifaces:
      - {name: if0, network: lan}
"""


def control_pids(directory: Path) -> list[int]:
    """Pids of the control processes serving `directory`, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"omnibed.emulator.control_process" in argv and str(directory).encode() in argv:
            if state != "Z":
                pids.append(int(entry.name))
    return pids


def eventually(check: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_control_process_lifecycle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    control = home / "control"
    env = {**os.environ, "OMNIBED_HOME": str(home)}
    env.pop("OMNIBED_CONTROL_IDLE", None)

    def omnibed(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OMNIBED, *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=300)

    api = Omnibed(home=home)
    request = api.make_request("local", nodes=1, walltime=timedelta(hours=1))
    api.reserve("local", request)
    name = request.name
    platform = tmp_path / "platform.yaml"
    platform.write_text(PLATFORM)
    try:
        assert control_pids(control) == []
        up = omnibed("emulate", "up", name, str(platform))
        assert up.returncode == 0, up.stderr
        # started on demand, private to the user
        [first] = control_pids(control)
        assert stat.S_IMODE(control.stat().st_mode) == 0o700
        assert stat.S_IMODE((control / "socket").lstat().st_mode) == 0o600
        assert _connect_as_nobody(control / "socket") == "PermissionError"

        # reused: the same process, and the same agent runs both commands
        parent = [omnibed("emulate", "exec", name, "vnode-0", "--", "sh", "-c", "echo $PPID")
                  for _ in range(2)]
        assert [p.returncode for p in parent] == [0, 0], parent[0].stderr
        assert parent[0].stdout == parent[1].stdout
        assert control_pids(control) == [first]

        # killed: the next command starts another one over the stale socket
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: first not in control_pids(control))
        again = omnibed("emulate", "exec", name, "vnode-0", "--", "true")
        assert again.returncode == 0, again.stderr
        [second] = control_pids(control)
        assert second != first

        # killed again: gc removes the socket it left, and teardown still works
        os.kill(second, signal.SIGKILL)
        assert eventually(lambda: second not in control_pids(control))
        assert (control / "socket").exists()
        gc = omnibed("gc")
        assert gc.returncode == 0, gc.stderr
        assert not (control / "socket").exists()

        # a directory others may enter is refused, not used
        control.chmod(0o755)
        refused = omnibed("emulate", "status", name)
        assert refused.returncode == 2
        assert "not yours alone" in refused.stderr and "Traceback" not in refused.stderr
        control.chmod(0o700)

        # idle: it ends after OMNIBED_CONTROL_IDLE seconds unused, removing its socket
        status = omnibed("emulate", "status", name, OMNIBED_CONTROL_IDLE="1")
        assert status.returncode == 0, status.stderr
        assert "vnode-1" in status.stdout
        assert eventually(lambda: not control_pids(control) and not (control / "socket").exists())

        down = omnibed("emulate", "down", name)
        assert down.returncode == 0, down.stderr
        assert "removed 2 vnodes" in down.stdout
        assert len(control_pids(control)) == 1
    finally:
        released = omnibed("release", name)
    assert released.returncode == 0, released.stderr
    # released: its last reservation gone, it ends at once
    assert eventually(lambda: not control_pids(control), seconds=5)
    assert not (control / "socket").exists()


def _connect_as_nobody(path: Path) -> str:
    """What connecting to `path` as user nobody raised ("" if it connected)."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.socket(socket.AF_UNIX).connect(sys.argv[1])\n"
        "    print('')\n"
        "except OSError as error:\n"
        "    print(type(error).__name__)\n"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", probe, str(path)], user=65534, group=65534,
        extra_groups=[], capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_socket_only_someone_else_could_have_made_is_not_connected_to(tmp_path: Path) -> None:
    """A control directory owned by another user is refused before any connection."""
    from omnibed.core.errors import UsageError
    from omnibed.emulator.control import ControlAgents

    control = tmp_path / "control"
    control.mkdir(mode=0o700)
    os.chown(control, 65534, 65534)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(control / "socket"))
    listener.listen()
    try:
        agents = ControlAgents(control, idle=5)
        with pytest.raises(UsageError, match="not yours alone"):
            with agents.lease("scope", ["pnode-1"], lambda wanted: {}, tmp_path):
                pass
    finally:
        listener.close()
