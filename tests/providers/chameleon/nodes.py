"""Real machines behind the fake OpenStack's servers: one network namespace and sshd each.

Like a Chameleon site: the nodes share a private LAN (a bridge in its own namespace,
"sharednet1"); only the node holding the floating IP is reachable from this host (a veth
with a /30), so every other node is reached through it as a jump host. Each node has a
`cc` user with passwordless sudo and a root whose authorized_keys says "Please login as
cc" (what cloud-init does on CC images). Users, homes and sudoers exist only inside the
node: `ip netns exec` bind-mounts /etc/netns/<ns>/{passwd,group,shadow,sudoers.d} over /etc,
and root's home is a temp directory, so nothing on this machine changes.
`cc-snapshot` is a stub that must run as root and uploads to the fake Glance through
the fake's UNIX socket with the OS_TOKEN it was given (nodes cannot reach 127.0.0.1).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.fakes.sshd import FakeSSHD

CC_UID = 4242
CC_SNAPSHOT = """#!/usr/bin/python3
import http.client, json, os, socket, sys
if os.geteuid() != 0:
    sys.exit("cc-snapshot: must run as root (use sudo)")
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect({socket!r})
conn = Unix("localhost")
conn.request("POST", "/image/v2/images", json.dumps({{"name": sys.argv[-1],
             "disk_format": "qcow2", "container_format": "bare"}}),
             {{"X-Auth-Token": os.environ.get("OS_TOKEN", ""),
              "Content-Type": "application/json"}})
answer = conn.getresponse()
print(answer.status, answer.read().decode())
sys.exit(0 if answer.status == 201 else 1)
"""


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


class _NodeSSHD(FakeSSHD):
    """FakeSSHD reading each user's own ~/.ssh/authorized_keys, as on a real image."""

    def _config(self, directory: Path) -> str:
        return "\n".join(
            "AuthorizedKeysFile .ssh/authorized_keys" if line.startswith("AuthorizedKeysFile")
            else line for line in super()._config(directory).splitlines()) + "\n"


class NetnsNodes:
    """The fake's `backer`; `close()` removes every namespace, link and file it made."""

    def __init__(self, unix_socket: str) -> None:
        self.tag = "och" + secrets.token_hex(3)
        self.subnet = secrets.randbelow(200) + 20
        self.dir = Path(tempfile.mkdtemp(prefix="omnibed-chameleon-nodes-"))
        self.dir.chmod(0o755)
        self.unix_socket = unix_socket
        self.lan = f"{self.tag}-lan"
        self.nodes: dict[str, tuple[str, FakeSSHD]] = {}
        self.gateways: dict[str, tuple[str, str]] = {}  # server -> (host-side link, its IP)
        self.bindings = 0
        self.booted = 0
        _ip("netns", "add", self.lan)
        _ip("link", "add", "br0", "type", "bridge", netns=self.lan)
        _ip("link", "set", "br0", "up", netns=self.lan)
        bindir = self.dir / "bin"
        bindir.mkdir()
        (bindir / "cc-snapshot").write_text(CC_SNAPSHOT.format(socket=unix_socket))
        (bindir / "cc-snapshot").chmod(0o755)

    def _etc(self, ns: str, home: Path) -> None:
        etc = Path("/etc/netns") / ns
        (etc / "sudoers.d").mkdir(parents=True)
        passwd = [line.replace(":/root:", f":{home / 'root'}:") if line.startswith("root:")
                  else line for line in Path("/etc/passwd").read_text().splitlines()]
        passwd.append(f"cc:x:{CC_UID}:{CC_UID}:Chameleon user:{home / 'cc'}:/bin/sh")
        (etc / "passwd").write_text("\n".join(passwd) + "\n")
        (etc / "group").write_text(Path("/etc/group").read_text() + f"cc:x:{CC_UID}:\n")
        shadow = etc / "shadow"  # pam_unix's account check for sudo wants an entry
        shadow.write_text(Path("/etc/shadow").read_text() + "cc:*:19000:0:99999:7:::\n")
        shadow.chmod(0o640)
        sudoers = etc / "sudoers.d" / "cc"
        sudoers.write_text(f'Defaults secure_path="{self.dir / "bin"}:/usr/sbin:/usr/bin:'
                           '/sbin:/bin"\ncc ALL=(ALL) NOPASSWD:ALL\n')
        sudoers.chmod(0o440)

    def boot(self, server_id: str, name: str, public_key: str) -> tuple[str, str]:
        self.booted += 1
        index = self.booted + 9
        ns = f"{self.tag}-n{index}"
        home = self.dir / ns
        for user, uid in (("root", 0), ("cc", CC_UID)):
            ssh_dir = home / user / ".ssh"
            ssh_dir.mkdir(parents=True)
            keys = public_key if user == "cc" else (
                'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="echo '
                "'Please login as the user \\\"cc\\\" rather than the user \\\"root\\\".';"
                'echo;exit 142" ' + public_key)
            (ssh_dir / "authorized_keys").write_text(keys + "\n")
            for path in (home / user, ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(path, uid, uid)
        self._etc(ns, home)
        _ip("netns", "add", ns)
        _ip("link", "add", f"{self.tag}{index}", "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("link", "set", f"{self.tag}{index}", "netns", self.lan)
        _ip("link", "set", f"{self.tag}{index}", "master", "br0", "up", netns=self.lan)
        address = f"10.77.{self.subnet}.{index}"
        _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
        _ip("link", "set", "eth0", "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)
        mac = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/address"],
                             check=True, capture_output=True, text=True).stdout.strip()
        sshd = _NodeSSHD([], address="0.0.0.0", netns=ns).start()
        self.nodes[server_id] = (ns, sshd)
        return address, mac

    def bind_floating_ip(self, server_id: str) -> str:
        """A veth from this host into the server, one /30 per floating IP (several
        reservations may hold one at a time); binding a bound server again keeps it."""
        if server_id in self.gateways:
            return self.gateways[server_id][1]
        ns = self.nodes[server_id][0]
        self.bindings += 1
        base = 4 * self.bindings
        link = f"{self.tag}g{self.bindings}"
        _ip("link", "add", link, "type", "veth", "peer", "name", "fip0", "netns", ns)
        _ip("addr", "add", f"172.31.{self.subnet}.{base + 1}/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("addr", "add", f"172.31.{self.subnet}.{base + 2}/30", "dev", "fip0", netns=ns)
        _ip("link", "set", "fip0", "up", netns=ns)
        self.gateways[server_id] = (link, f"172.31.{self.subnet}.{base + 2}")
        return self.gateways[server_id][1]

    def delete(self, server_id: str) -> None:
        ns, sshd = self.nodes.pop(server_id)
        sshd.stop()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        gateway = self.gateways.pop(server_id, None)
        if gateway is not None:
            subprocess.run(["ip", "link", "del", gateway[0]], capture_output=True)

    def close(self) -> None:
        for server_id in list(self.nodes):
            self.delete(server_id)
        subprocess.run(["ip", "netns", "del", self.lan], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
