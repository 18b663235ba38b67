"""omnibed.core.ssh against real OpenSSH servers (tests.fakes.sshd) and the real `ssh` client."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from omnibed.core.errors import HostKeyMismatch, SSHError, UsageError
from omnibed.core.ssh import (
    CommandResult,
    KeyPair,
    ensure_keypair,
    open_sftp,
    run,
    run_many,
    ssh_command_line,
)
from omnibed.core.types import SSHEndpoint
from tests.fakes.sshd import FakeSSHD, free_port, session_processes

StartSSHD = Callable[..., FakeSSHD]


@pytest.fixture
def keypair(tmp_path: Path) -> KeyPair:
    return ensure_keypair(tmp_path / "reservation")


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "reservation" / "known_hosts"


@pytest.fixture
def start_sshd(keypair: KeyPair) -> Iterator[StartSSHD]:
    """Start FakeSSHDs trusting the reservation key; all are stopped at the end."""
    started: list[FakeSSHD] = []

    def start(**options: object) -> FakeSSHD:
        keys = options.pop("authorized_keys", [keypair.public_openssh])
        sshd = FakeSSHD(keys, **options)  # type: ignore[arg-type]
        started.append(sshd)
        return sshd.start()

    try:
        yield start
    finally:
        for sshd in started:
            sshd.stop()


def endpoint(sshd: FakeSSHD, keypair: KeyPair, *jumps: SSHEndpoint) -> SSHEndpoint:
    return SSHEndpoint(sshd.host, sshd.port, key_file=str(keypair.private_path), jumps=jumps)


def recorded(known_hosts: Path) -> dict[str, str]:
    """host name -> "type base64" as written in the known_hosts file."""
    lines = [line.split(" ", 1) for line in known_hosts.read_text().splitlines()]
    return {name: key for name, key in lines}


def test_keypair_is_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "reservations" / "r1"
    first = ensure_keypair(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.private_path.stat().st_mode) == 0o600
    assert first.private_path == directory / "id_ed25519"
    assert first.public_openssh.startswith("ssh-ed25519 ")
    assert (directory / "id_ed25519.pub").read_text().strip() == first.public_openssh
    loaded = paramiko.Ed25519Key.from_private_key_file(str(first.private_path))
    assert first.public_openssh.split()[1] == loaded.get_base64()

    private_bytes = first.private_path.read_bytes()
    (directory / "id_ed25519.pub").unlink()
    again = ensure_keypair(directory)
    assert again == first
    assert first.private_path.read_bytes() == private_bytes
    assert (directory / "id_ed25519.pub").read_text().strip() == first.public_openssh
    assert ensure_keypair(tmp_path / "r2").public_openssh != first.public_openssh


@pytest.mark.root
def test_run_as_root_on_a_non_22_port_records_the_host_key(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    sshd = start_sshd()
    assert sshd.port != 22
    result = run(endpoint(sshd, keypair), "id -u", known_hosts, node="n1")
    assert (result.node, result.exit_status, result.stdout, result.stderr) == ("n1", 0, "0\n", "")
    assert recorded(known_hosts) == {f"[{sshd.host}]:{sshd.port}": sshd.host_key}
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    # second contact: the key is checked, nothing is appended
    assert run(endpoint(sshd, keypair), "id -un", known_hosts).stdout == "root\n"
    assert len(known_hosts.read_text().splitlines()) == 1


@pytest.mark.root
def test_run_through_a_chain_of_two_jump_hosts(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    first = start_sshd(address="127.0.0.1", log_level="DEBUG1")
    second = start_sshd(address="127.0.0.2", log_level="DEBUG1")
    target = start_sshd(address="127.0.0.3")
    node = endpoint(target, keypair, endpoint(first, keypair), endpoint(second, keypair))
    result = run(node, 'echo "$SSH_CONNECTION"; id -u', known_hosts)
    assert result.exit_status == 0
    assert result.stdout.endswith(f" 127.0.0.3 {target.port}\n0\n")
    # each jump forwarded to the next hop, as `ssh -J first,second target` does
    assert f"target 127.0.0.2 port {second.port}" in first.log()
    assert f"target 127.0.0.3 port {target.port}" in second.log()
    assert f"target 127.0.0.3 port {target.port}" not in first.log()
    assert set(recorded(known_hosts)) == {
        f"[127.0.0.1]:{first.port}",
        f"[127.0.0.2]:{second.port}",
        f"[127.0.0.3]:{target.port}",
    }


@pytest.mark.root
def test_changed_host_key_is_refused_and_the_file_kept(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    sshd = start_sshd()
    assert run(endpoint(sshd, keypair), "true", known_hosts).exit_status == 0
    before = known_hosts.read_bytes()
    sshd.stop()
    impostor = start_sshd(port=sshd.port)
    assert impostor.host_key != sshd.host_key

    with pytest.raises(HostKeyMismatch) as caught:
        run(endpoint(impostor, keypair), "true", known_hosts)
    assert str(known_hosts) in str(caught.value)
    assert f"[127.0.0.1]:{impostor.port}" in str(caught.value)
    assert known_hosts.read_bytes() == before

    # the OpenSSH client reading the same file refuses too
    argv = ssh_command_line(endpoint(impostor, keypair), known_hosts) + ["true"]
    refused = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    assert known_hosts.read_bytes() == before


@pytest.mark.root
def test_run_many_streams_bytes_per_node_and_keeps_exit_codes(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    servers = {name: start_sshd() for name in ("n1", "n2", "n3")}
    failing = servers["n3"].port
    command = (
        'echo "hello from ${SSH_CONNECTION##* }"; printf "\\377\\0no newline"; '
        'echo warn >&2; '
        f'[ "${{SSH_CONNECTION##* }}" = {failing} ] && exit 3; exit 0'
    )
    pieces: list[tuple[str, str, bytes]] = []
    results = run_many(
        {name: endpoint(sshd, keypair) for name, sshd in servers.items()},
        command,
        known_hosts,
        on_output=lambda node, stream, data: pieces.append((node, stream, data)),
    )
    assert {name: r.exit_status for name, r in results.items()} == {"n1": 0, "n2": 0, "n3": 3}
    for name, sshd in servers.items():
        stdout = f"hello from {sshd.port}\n".encode() + b"\xff\x00no newline"
        assert results[name].node == name
        assert results[name].stdout_bytes == stdout
        assert results[name].stderr_bytes == b"warn\n"
        assert b"".join(d for n, s, d in pieces if (n, s) == (name, "stdout")) == stdout
        assert b"".join(d for n, s, d in pieces if (n, s) == (name, "stderr")) == b"warn\n"
    assert len(recorded(known_hosts)) == 3


@pytest.mark.root
def test_an_interrupted_run_many_exits_although_a_node_went_silent(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    """A node that stops answering without closing its connection (frozen, or cut off with
    no FIN) must not keep omnibed from exiting once interrupted: the caller releases the
    nodes after run_many returns, and nothing may wait on that node at exit."""
    sshd = start_sshd()
    marker = f"sleep {3000 + uuid.uuid4().int % 1000}"
    script = (
        "import signal; from pathlib import Path\n"
        "from omnibed.core.ssh import run_many\n"
        "from omnibed.core.types import SSHEndpoint\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"node = SSHEndpoint({sshd.host!r}, {sshd.port}, key_file={str(keypair.private_path)!r})\n"
        f"run_many({{'n1': node}}, 'exec {marker}', Path({str(known_hosts)!r}))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-x", "-f", marker], capture_output=True).returncode:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.1)
        for pid in session_processes(sshd):  # the node goes silent, its connection stays
            os.kill(pid, signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert b"KeyboardInterrupt" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.root
def test_parallel_first_contacts_with_one_host_record_it_once(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    sshd = start_sshd()
    same = {f"alias{i}": endpoint(sshd, keypair) for i in range(6)}
    results = run_many(same, "id -u", known_hosts)
    assert all(r.exit_status == 0 and r.stdout == "0\n" for r in results.values())
    assert known_hosts.read_text().splitlines() == [
        f"[127.0.0.1]:{sshd.port} {sshd.host_key}"
    ]


def blocked_on_flock(path: Path) -> bool:
    """Whether some process waits for a flock on `path` (a `->` entry in /proc/locks)."""
    inode = f":{path.stat().st_ino} "
    return any(
        "->" in line and "FLOCK" in line and inode in line
        for line in Path("/proc/locks").read_text().splitlines()
    )


@pytest.mark.root
def test_first_contact_waits_for_the_known_hosts_lock_and_rereads_the_file(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    """Another process recording a key for the same host meanwhile wins; ours is checked."""
    sshd = start_sshd()
    other_key = ensure_keypair(known_hosts.parent / "other").public_openssh.rsplit(" ", 1)[0]
    line = f"[127.0.0.1]:{sshd.port} {other_key}\n"
    outcome: list[BaseException | CommandResult] = []

    def contact() -> None:
        try:
            outcome.append(run(endpoint(sshd, keypair), "true", known_hosts))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    known_hosts.touch(mode=0o600)
    with known_hosts.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=contact)
        worker.start()
        while worker.is_alive() and not blocked_on_flock(known_hosts):
            worker.join(0.05)
        assert worker.is_alive(), f"recorded without taking the lock: {outcome}"
        held.write(line)
        held.flush()
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join()
    assert isinstance(outcome[0], HostKeyMismatch), outcome
    assert known_hosts.read_text() == line


@pytest.mark.root
def test_unreachable_node_gets_255_and_the_others_still_run(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    sshd = start_sshd()
    closed = free_port()
    pieces: list[tuple[str, str, bytes]] = []
    results = run_many(
        {"up": endpoint(sshd, keypair), "down": SSHEndpoint("127.0.0.1", closed)},
        "echo alive",
        known_hosts,
        on_output=lambda node, stream, data: pieces.append((node, stream, data)),
    )
    assert (results["up"].exit_status, results["up"].stdout) == (0, "alive\n")
    assert results["down"].exit_status == 255
    assert f"cannot reach 127.0.0.1:{closed}" in results["down"].stderr
    assert ("up", "stdout", b"alive\n") in pieces
    told = [d for n, s, d in pieces if (n, s) == ("down", "stderr")]
    assert len(told) == 1 and b"cannot reach" in told[0] and told[0].endswith(b"\n")


@pytest.mark.root
def test_refused_login_names_the_key(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path, tmp_path: Path
) -> None:
    stranger = ensure_keypair(tmp_path / "other")
    sshd = start_sshd(authorized_keys=[stranger.public_openssh])
    with pytest.raises(SSHError) as caught:
        run(endpoint(sshd, keypair), "true", known_hosts)
    assert str(keypair.private_path) in str(caught.value)
    assert "authorized_keys" in str(caught.value)
    assert not isinstance(caught.value, HostKeyMismatch)


@pytest.mark.root
def test_jump_host_that_cannot_reach_the_target_says_so(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    jump = start_sshd()
    closed = free_port()
    node = SSHEndpoint("127.0.0.1", closed, jumps=(endpoint(jump, keypair),))
    with pytest.raises(SSHError) as caught:
        run(node, "true", known_hosts)
    assert f"jump host root@127.0.0.1:{jump.port}" in str(caught.value)
    assert f"127.0.0.1:{closed}" in str(caught.value)


def ended(process: Path) -> bool:
    """Whether the /proc/PID entry is gone or a zombie."""
    try:
        return (process / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.root
def test_command_timeout_raises(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path
) -> None:
    sshd = start_sshd()
    pieces: list[bytes] = []
    with pytest.raises(SSHError, match="did not finish within 1s"):
        run(endpoint(sshd, keypair), "echo $$; exec sleep 600", known_hosts, timeout=1,
            on_output=lambda node, stream, data: pieces.append(data))
    sleeper = Path(f"/proc/{b''.join(pieces).decode().strip()}")
    assert "sleep" in (sleeper / "cmdline").read_text()
    sshd.stop()  # also ends the sessions that sshd forked
    deadline = time.monotonic() + 60  # generous: only a kill that never comes fails
    while not ended(sleeper):
        assert time.monotonic() < deadline, "stop() left the session's command running"
        time.sleep(0.05)


@pytest.mark.root
def test_sftp_upload_is_seen_by_the_node(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path, tmp_path: Path
) -> None:
    sshd = start_sshd()
    remote = tmp_path / "uploaded.txt"
    with open_sftp(endpoint(sshd, keypair), known_hosts) as sftp:
        with sftp.open(str(remote), "w") as out:
            out.write("agent bytes\n")
    assert run(endpoint(sshd, keypair), f"cat {remote}", known_hosts).stdout == "agent bytes\n"


@pytest.mark.root
@pytest.mark.parametrize("jumps", [0, 2])
def test_ssh_command_line_runs_a_command(
    start_sshd: StartSSHD, keypair: KeyPair, known_hosts: Path, jumps: int
) -> None:
    hops = [endpoint(start_sshd(address=f"127.0.0.{i + 2}"), keypair) for i in range(jumps)]
    target = start_sshd(address="127.0.0.9")
    node = endpoint(target, keypair, *hops)
    argv = ssh_command_line(node, known_hosts)
    assert argv[0] == "ssh" and argv[-1] == "127.0.0.9"

    first = subprocess.run(
        [*argv, 'echo "${SSH_CONNECTION##* }"; id -u'],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{target.port}\n0\n"
    assert len(recorded(known_hosts)) == jumps + 1
    # the file written by OpenSSH is read by paramiko: no new line, no mismatch
    before = known_hosts.read_bytes()
    assert run(node, "id -u", known_hosts).stdout == "0\n"
    assert known_hosts.read_bytes() == before

    exit_code = subprocess.run([*argv, "exit 7"], stdin=subprocess.DEVNULL, timeout=120)
    assert exit_code.returncode == 7


@pytest.mark.root
def test_fake_sshd_in_a_network_namespace_on_port_22(keypair: KeyPair, known_hosts: Path,
                                                      tmp_path: Path) -> None:
    netns = f"obssh-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        with FakeSSHD([keypair.public_openssh], netns=netns, user_home=str(tmp_path)) as sshd:
            node = SSHEndpoint(sshd.host, sshd.port, key_file=str(keypair.private_path))
            argv = ssh_command_line(node, known_hosts)
            inside = subprocess.run(
                ["ip", "netns", "exec", netns, *argv, 'echo "$HOME"; ls /sys/class/net'],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
            )
            assert inside.returncode == 0, inside.stderr
            assert inside.stdout == f"{tmp_path}\nlo\n"  # only the namespace's loopback
            assert recorded(known_hosts) == {"127.0.0.1": sshd.host_key}  # port 22: bare name
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)


@pytest.mark.root
def test_openssh_checks_the_host_key_in_a_path_openssh_would_split(
    start_sshd: StartSSHD, tmp_path: Path
) -> None:
    """A space, quotes, a backslash or a %-token in the reservation's directory are taken
    literally: the key is recorded there (0600, nowhere else) and a changed key is refused."""
    directory = tmp_path / 'my res %h "q" \\x'
    keypair = ensure_keypair(directory)
    known_hosts = directory / "known_hosts"
    sshd = start_sshd(authorized_keys=[keypair.public_openssh])
    node = endpoint(sshd, keypair)
    before = set(tmp_path.rglob("*"))
    first = subprocess.run(
        [*ssh_command_line(node, known_hosts), "id -u"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == "0\n"
    assert recorded(known_hosts) == {f"[127.0.0.1]:{sshd.port}": sshd.host_key}
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert set(tmp_path.rglob("*")) - before == {known_hosts}, "a key written elsewhere"

    sshd.stop()
    impostor = start_sshd(port=sshd.port, authorized_keys=[keypair.public_openssh])
    refused = subprocess.run(
        [*ssh_command_line(endpoint(impostor, keypair), known_hosts), "id -u"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path,
    )
    assert refused.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr


@pytest.mark.root
def test_openssh_through_a_jump_host_in_a_path_openssh_would_split(
    start_sshd: StartSSHD, tmp_path: Path
) -> None:
    directory = tmp_path / "my res %h"
    keypair = ensure_keypair(directory)
    known_hosts = directory / "known_hosts"
    jump = start_sshd(address="127.0.0.2", authorized_keys=[keypair.public_openssh])
    target = start_sshd(address="127.0.0.3", authorized_keys=[keypair.public_openssh])
    node = endpoint(target, keypair, endpoint(jump, keypair))
    ran = subprocess.run(
        [*ssh_command_line(node, known_hosts), "id -u"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert set(recorded(known_hosts)) == {
        f"[127.0.0.2]:{jump.port}", f"[127.0.0.3]:{target.port}"
    }
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600


def test_a_path_openssh_would_expand_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "${HOME}"
    node = SSHEndpoint("127.0.0.1", 2222, key_file=str(directory / "id_ed25519"))
    with pytest.raises(UsageError, match="OpenSSH"):
        ssh_command_line(node, directory / "known_hosts")


def test_keypair_files_and_their_directories_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "reservations" / "r1"
    ensure_keypair(directory)
    paths = [tmp_path / "reservations", *(tmp_path / "reservations").rglob("*")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {"reservations": 0o700, "r1": 0o700, "id_ed25519": 0o600,
                     "id_ed25519.pub": 0o600}
