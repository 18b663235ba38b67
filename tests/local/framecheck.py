"""Raw Ethernet frames in and out of a namespace (AF_PACKET), to see what a switch passes.

Run inside a namespace with `ip netns exec NS python framecheck.py ...`:

    recv IFACE END_TOKEN          promiscuous receiver: prints "ready", then one line per
                                  test frame seen, until the frame carrying END_TOKEN
    send IFACE SRC,DST,TOKEN ...  sends one frame per argument, in order, from one CPU

Frames use the local experimental EtherType 0x88B5 and carry their token as payload.
The sender stays on one CPU so the frames cross the veths and the bridge in order: once the
receiver sees the END_TOKEN frame sent last, any earlier frame that passed has arrived.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

ETHERTYPE = 0x88B5
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
TIMEOUT = 30.0


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    sock.bind((interface, ETHERTYPE))
    return sock


def receive(interface: str, end: str) -> int:
    sock = _socket(interface)
    index = socket.if_nametoindex(interface)
    membership = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
    sock.settimeout(TIMEOUT)
    print("ready", flush=True)
    while True:
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            return 1
        token = frame[14:].rstrip(b"\0").decode(errors="replace")
        print(token, flush=True)
        if token == end:
            return 0


def send(interface: str, specs: list[str]) -> int:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sock = _socket(interface)
    for spec in specs:
        source, destination, token = spec.split(",")
        payload = token.encode().ljust(46, b"\0")
        sock.send(_mac(destination) + _mac(source) + struct.pack("!H", ETHERTYPE) + payload)
    return 0


if __name__ == "__main__":
    verb, interface, *rest = sys.argv[1:]
    sys.exit(receive(interface, rest[0]) if verb == "recv" else send(interface, rest))
