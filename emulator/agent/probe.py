"""Runtime foreign-MAC probe between two pnodes over AF_PACKET.

The sender emits two Ethernet frames of the local experimental ethertype 0x88b5 on its NIC:
"src" carries a foreign (locally administered, random) source MAC towards the listener's MAC,
"dst" carries the sender's own MAC towards a foreign destination MAC. Each payload holds the
probe's nonce and the frame's tag. The listener, promiscuous on its NIC, reports which tags
arrived; bridging a vnetwork onto that underlay needs both. Python 3.9 compatible.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time

ETH_P_PROBE = 0x88B5
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
TAGS = ("src", "dst")
MAGIC = b"omnibed-probe"


def foreign_mac() -> str:
    """A random locally administered unicast MAC (never a NIC's burnt-in one)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _bound_mac(sock: socket.socket) -> str:
    """The MAC of the NIC an AF_PACKET socket is bound to (sysfs may show another netns)."""
    return ":".join(f"{b:02x}" for b in sock.getsockname()[4])


def _payload(nonce: str, tag: str) -> bytes:
    return MAGIC + b"|" + nonce.encode() + b"|" + tag.encode()


class Listener:
    """An open promiscuous AF_PACKET socket on `nic`, collecting the frames of `nonce`."""

    def __init__(self, nic: str, nonce: str) -> None:
        self.nic = nic
        self.nonce = nonce
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_PROBE))
        index = socket.if_nametoindex(nic)
        self.sock.bind((nic, ETH_P_PROBE))
        self.mac = _bound_mac(self.sock)
        mreq = struct.pack("=iHH8s", index, PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)

    def collect(self, timeout: float) -> list[str]:
        """Wait until both frames arrived or `timeout` seconds passed; the tags seen."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        try:
            while len(seen) < len(TAGS):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    break
                frame = self.sock.recv(2048)
                for tag in TAGS:
                    if _payload(self.nonce, tag) in frame[14:]:
                        seen.add(tag)
        finally:
            self.sock.close()
        return [t for t in TAGS if t in seen]


def send(nic: str, peer_mac: str, nonce: str, repeat: int = 3) -> dict[str, str]:
    """Emit the two probe frames on `nic` (`repeat` times each); the MACs used."""
    spoofed_src, spoofed_dst = foreign_mac(), foreign_mac()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((nic, 0))
        frames = {
            "src": _mac(peer_mac) + _mac(spoofed_src),
            "dst": _mac(spoofed_dst) + _mac(_bound_mac(sock)),
        }
        for _ in range(repeat):
            for tag, header in frames.items():
                frame = header + struct.pack("!H", ETH_P_PROBE) + _payload(nonce, tag)
                sock.send(frame.ljust(60, b"\0"))
            time.sleep(0.01)
    finally:
        sock.close()
    return {"foreign_src": spoofed_src, "foreign_dst": spoofed_dst}
