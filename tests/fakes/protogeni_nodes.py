"""Nodes for the fake ProtoGENI aggregate, backed by real sshd (needs root).

Each node is a network namespace whose `eth0` is plugged, like every node of the backend,
into one host bridge: the experiment's control network, one random /24 of 198.19.0.0/16
(RFC 2544 benchmark space, unused elsewhere on this machine), whose first address is the
host's and the nodes' default gateway. A real sshd (tests/fakes/sshd.py) listens on port 22
of the node's address. `ip netns exec` bind-mounts
`/etc/netns/<ns>/{passwd,group,shadow,sudoers}` over `/etc` for that sshd and everything
it spawns, so each node has, as on CloudLab:

- the CloudLab user (a throwaway uid that exists only in the node's passwd), its home in
  a temporary directory, and the CreateSliver users' keys in `~/.ssh/authorized_keys`;
- passwordless sudo for that user (the real `sudo`, reading the node's sudoers);
- a root whose home is another temporary directory, so installing a key for root never
  touches this machine's /root.

Its experiment interfaces are devices `eth1`, `eth2`, ... (veths) carrying the MACs and
addresses the manifest announces (their RSpec names, such as `node0:if0`, are not Linux
names); the host ends of the interfaces in one subnet are plugged into one host bridge,
the LAN that joins them. Its default route goes out of `eth0`, whose address is the node's
control address. Raw PCs are reached on <node address>:22. Xen VMs are reached like
CloudLab's: one shared host address (127.0.0.1) and a per-VM forwarded port, relayed to the
VM's sshd; the manifest gives them no host IPv4, and their control address is private to
the experiment's control network (CloudLab's VMs get one in 172.16.0.0/12).
The `hostname` a node reports is this machine's, unrelated to the manifest's host names.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.fakes.sshd import FakeSSHD

XEN_HOST = "127.0.0.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class _NodeSSHD(FakeSSHD):
    """sshd reading each user's own ~/.ssh/authorized_keys (the node's passwd decides ~)."""

    def _config(self, directory: Path) -> str:
        own = f"AuthorizedKeysFile {directory / 'authorized_keys'}"
        return super()._config(directory).replace(own, "AuthorizedKeysFile .ssh/authorized_keys")


class _Forwarder:
    """Relay every TCP connection to `address:port` on to `target` (a Xen dom0 port map)."""

    def __init__(self, address: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((address, 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


class _Bridges:
    """The host bridges of one backend: the control network (`subnet`, the host holding its
    first address) and one bridge per experiment subnet, each made on first use."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.subnet = ipaddress.ip_network(f"198.19.{secrets.randbelow(256)}.0/24")
        self.names: dict[str, str] = {}

    def plug(self, port: str, subnet: str) -> None:
        """Enslave host link `port` to the bridge of `subnet` and bring it up."""
        name = self.names.get(subnet)
        if name is None:
            name = self.names[subnet] = f"oc{self.tag}b{len(self.names)}"
            _ip("link", "add", name, "type", "bridge")
            if subnet == str(self.subnet):
                _ip("addr", "add", f"{self.subnet.network_address + 1}/24", "dev", name)
            _ip("link", "set", name, "up")
        _ip("link", "set", port, "master", name, "up")

    def close(self) -> None:
        for name in self.names.values():
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        self.names.clear()


class _Node:
    """One netns node: eth0 on the control bridge, experiment veths, /etc overrides, homes,
    sshd."""

    def __init__(self, tag: str, index: int, control: _Bridges, username: str,
                 keys: list[str], interfaces: list[tuple[str, str]]) -> None:
        self.netns = f"omnibed-cl-{tag}-{index}"
        self.host_if = f"oc{tag}{index}h"
        self.etc = Path("/etc/netns") / self.netns
        self.directory = Path(tempfile.mkdtemp(prefix=f"omnibed-cl-{tag}-{index}-"))
        self.sshd: FakeSSHD | None = None
        self.address = str(control.subnet.network_address + index + 1)
        try:
            self._network(control, interfaces)
            self.root_home, self.user_home = self._accounts(username, keys)
            self.sshd = _NodeSSHD([], address=self.address, port=22, netns=self.netns).start()
        except BaseException:
            self.stop()
            raise

    def _network(self, bridges: _Bridges, interfaces: list[tuple[str, str]]) -> None:
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0",
            "netns", self.netns)
        bridges.plug(self.host_if, str(bridges.subnet))
        gateway = str(bridges.subnet.network_address + 1)
        for args in (("addr", "add", f"{self.address}/{bridges.subnet.prefixlen}", "dev",
                      "eth0"),
                     ("link", "set", "eth0", "up"), ("link", "set", "lo", "up"),
                     ("route", "add", "default", "via", gateway, "dev", "eth0")):
            _ip("-n", self.netns, *args)
        for number, (mac, address) in enumerate(interfaces, start=1):
            name, host_end = f"eth{number}", f"{self.host_if[:-1]}e{number}"
            mac = ":".join(mac[i:i + 2] for i in range(0, 12, 2))  # the manifest's 02ab...
            # a veth whose host end joins the LAN's bridge: this kernel may lack the dummy
            # module
            _ip("link", "add", host_end, "type", "veth", "peer", "name", name, "address", mac,
                "netns", self.netns)
            _ip("-n", self.netns, "link", "set", name, "up")
            if address:
                _ip("-n", self.netns, "addr", "add", address, "dev", name)
                bridges.plug(host_end, str(ipaddress.ip_interface(address).network))

    def _accounts(self, username: str, keys: list[str]) -> tuple[Path, Path]:
        self.directory.chmod(0o755)
        uid = 61000 + secrets.randbelow(3000)
        root_home = self.directory / "root"
        root_home.mkdir(mode=0o700)
        user_home = self.directory / "home" / username
        (user_home / ".ssh").mkdir(parents=True)
        (user_home / ".ssh" / "authorized_keys").write_text("".join(k + "\n" for k in keys))
        for path in (user_home, user_home / ".ssh", user_home / ".ssh" / "authorized_keys"):
            shutil.chown(path, uid, uid)
        (self.directory / "home").chmod(0o755)
        self.etc.mkdir(parents=True)
        passwd = Path("/etc/passwd").read_text().replace(
            "root:x:0:0:root:/root:", f"root:x:0:0:root:{root_home}:", 1
        )
        (self.etc / "passwd").write_text(
            passwd + f"{username}:x:{uid}:{uid}::{user_home}:/bin/sh\n"
        )
        (self.etc / "group").write_text(Path("/etc/group").read_text() + f"{username}:x:{uid}:\n")
        shadow = self.etc / "shadow"
        shutil.copy2("/etc/shadow", shadow)
        with shadow.open("a") as out:
            out.write(f"{username}:*:20000:0:99999:7:::\n")
        sudoers = self.etc / "sudoers"
        sudoers.write_text(f"root ALL=(ALL:ALL) ALL\n{username} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        return root_home, user_home

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)


class SSHNodes:
    """A fake-aggregate backend whose nodes are real sshd hosts (see module docstring)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.bridges = _Bridges(self.tag)
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.forwarders: dict[tuple[str, str], _Forwarder] = {}
        self._count = 0

    def boot(self, slice_name: str, client_id: str, xen: bool, username: str,
             public_keys: list[str], interfaces: list[tuple[str, str]]) -> tuple[str, int]:
        key = (slice_name, client_id)
        self._count += 1
        node = self.nodes[key] = _Node(self.tag, self._count, self.bridges, username,
                                       public_keys, interfaces)
        if not xen:
            return node.address, 22
        forwarder = self.forwarders[key] = _Forwarder(XEN_HOST, (node.address, 22))
        return XEN_HOST, forwarder.port

    def node(self, slice_name: str, client_id: str) -> _Node:
        return self.nodes[(slice_name, client_id)]

    def shutdown(self, slice_name: str, client_id: str) -> None:
        key = (slice_name, client_id)
        forwarder = self.forwarders.pop(key, None)
        if forwarder is not None:
            forwarder.close()
        node = self.nodes.pop(key, None)
        if node is not None:
            node.stop()

    def close(self) -> None:
        for slice_name, client_id in list(self.nodes):
            self.shutdown(slice_name, client_id)
        self.bridges.close()
