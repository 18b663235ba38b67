"""nlbatch.Batch against the real kernel: a refusal anywhere in a send names its request.

Only the last request of a send asks for an ack, so these check that a refused request in the
middle is still reported (and only it), that the requests after it were carried out, and that
a later flush on the same socket is not confused by anything left over.
"""

from __future__ import annotations

import errno

import pytest

from omnibed.emulator.agent import nlbatch as nl
from tests.emulator.support import in_fresh_netns


def _veth(name: str) -> bytes:
    """A veth pair `name` / `name`p in the current namespace."""
    peer = nl.link_body(f"{name}p")
    return nl.link_body(name, kind="veth", info_data=nl.nla(nl.VETH_INFO_PEER, peer))


@pytest.mark.root
def test_a_refusal_mid_send_names_its_request_and_the_rest_is_done() -> None:
    def work() -> tuple[nl.NetlinkFailure, bool, bool, dict[int, bytes | None]]:
        batch = nl.Batch()
        try:
            batch.add(nl.RTM_NEWLINK, nl.CREATE, _veth("nlb0"), "veth nlb0")
            batch.add(nl.RTM_NEWLINK, nl.CREATE, _veth("nlb0"), "veth nlb0 again")
            batch.add(nl.RTM_NEWLINK, nl.CREATE, _veth("nlb1"), "veth nlb1")
            with pytest.raises(nl.NetlinkFailure) as refused:
                batch.flush()
            made0 = batch.get_link("nlb0", "lookup nlb0")
            made1 = batch.get_link("nlb1", "lookup nlb1")
            absent = batch.get_link("nlb2", "lookup nlb2")  # tolerated: answered None
            batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=1, up=True), "lo up")
            replies = batch.flush()
            return refused.value, replies[made0] is not None, replies[made1] is not None, {
                absent: replies[absent]
            }
        finally:
            batch.close()

    failure, made0, made1, absent = in_fresh_netns(work)
    assert failure.what == "veth nlb0 again"
    assert failure.errno == errno.EEXIST
    assert made0 and made1  # the request after the refused one was carried out
    assert list(absent.values()) == [None]


@pytest.mark.root
def test_only_the_first_refusal_is_raised_and_every_reply_is_read() -> None:
    def work() -> tuple[nl.NetlinkFailure, dict[int, bytes | None], int]:
        batch = nl.Batch()
        try:
            batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=9999, up=True), "up 9999")
            batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=9998, up=True), "up 9998")
            batch.add(nl.RTM_NEWLINK, nl.SET, nl.link_body(index=1, up=True), "lo up")
            with pytest.raises(nl.NetlinkFailure) as refused:
                batch.flush()
            lo = batch.get_link("lo", "lookup lo")
            return refused.value, batch.flush(), lo
        finally:
            batch.close()

    failure, replies, lo = in_fresh_netns(work)
    assert failure.what == "up 9999"
    assert failure.errno == errno.ENODEV
    assert list(replies) == [lo] and nl.link_index(replies[lo] or b"") == 1
