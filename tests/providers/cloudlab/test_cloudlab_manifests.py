"""The CloudLab provider's manifest parsing over every fixture (tests/fixtures/cloudlab).

Each fixture is a real public manifest or one derived from it by the edits its SOURCES.md
row lists. Which nodes omnibed keeps and which NICs are on an omnibed extra LAN are stated
here per fixture; every other expected value (login, host address, SSH endpoint, MAC,
experiment address) is read from the file itself with lxml, not through geni-lib.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from geni.rspec.pgmanifest import Manifest
from lxml import etree

from omnibed.core.errors import ProviderError
from omnibed.core.types import NicRole
from omnibed.providers.cloudlab import _convert

FIXTURES = Path(__file__).parents[2] / "fixtures" / "cloudlab"
NS = {"g": "http://www.geni.net/resources/rspec/3",
      "e": "http://www.protogeni.net/resources/rspec/ext/emulab/1"}
WISC_NODES = ("server-1", "server-2", "server-3", "server-4", "server-5")
WISC_IFACES = {"interface-0", "interface-1", "interface-2", "interface-7", "interface-8"}

# file -> (the CloudLab user, the nodes omnibed can log in to, the NICs on its extra LAN)
EXPECTED = {
    "manifest_utah_c6525-100g_2node_link.xml": ("ingino", ("node0", "node1"), set()),
    # the certificate's URN says `bucketxv`; the manifest spells the login `BucketXv`
    "manifest_wisc_c220g1_5node_mixedcase_logins.xml": ("bucketxv", WISC_NODES, set()),
    "derived_utah_xen_forwarded_ports_no_host_ipv4.xml": ("ingino", ("node0", "node1"), set()),
    "derived_wisc_client_id_only_link_refs.xml": ("BucketXv", WISC_NODES, WISC_IFACES),
    "derived_wisc_blockstore_switch_zero_mac.xml": ("BUCKETXV", WISC_NODES, set()),
}


def test_every_fixture_is_expected() -> None:
    assert sorted(EXPECTED) == sorted(path.name for path in FIXTURES.glob("*.xml"))


def _element(root: etree._Element, client_id: str) -> etree._Element:
    return root.xpath(f"g:node[@client_id='{client_id}']", namespaces=NS)[0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nodes_and_nics_agree_with_the_file(name: str) -> None:
    text = (FIXTURES / name).read_text()
    root = etree.fromstring(text.encode())
    user, kept, extra = EXPECTED[name]
    manifest = Manifest(xml=text)
    nodes = _convert.to_nodes(manifest, user, "wisc")
    assert tuple(node.id for node in nodes) == kept
    for node in nodes:
        element = _element(root, node.id)
        login = next(lg for lg in element.xpath("g:services/g:login", namespaces=NS)
                     if lg.get("username").lower() == user.lower())
        assert (node.ssh.host, node.ssh.port, node.ssh.user) == (
            login.get("hostname"), int(login.get("port")), login.get("username"))
        host = element.find("g:host", NS)
        ips = [ip.get("address") for ip in element.xpath("g:interface/g:ip", namespaces=NS)]
        host_ipv4 = [host.get("ipv4")] if host.get("ipv4") else []
        assert node.addresses == tuple(host_ipv4 + ips)
        assert node.hostname == host.get("name")
        vnode = element.find("e:vnode", NS)
        assert node.hardware == vnode.get("hardware_type")
        # c6525-100g: AMD EPYC, c220g1: Intel Xeon (CloudLab manual); a Xen VM's is unknown
        assert node.arch == {"c6525-100g": "x86_64", "c220g1": "x86_64"}.get(node.hardware, "")
        assert node.site == "wisc"

        control, *experiment = _convert.to_nics(manifest, node.id)
        assert control.role is NicRole.CONTROL
        assert control.addresses == tuple(host_ipv4)
        interfaces = element.findall("g:interface", NS)
        assert [nic.name for nic in experiment] == sorted(i.get("client_id") for i in interfaces)
        for nic in experiment:
            iface = next(i for i in interfaces if i.get("client_id") == nic.name)
            mac = iface.get("mac_address")
            assert nic.mac == ("" if set(mac) == {"0"} else
                               ":".join(mac[i:i + 2] for i in range(0, 12, 2)))
            assert nic.role is (NicRole.EXTRA if nic.name in extra else NicRole.EXPERIMENT)


def test_the_users_own_login_is_used_whatever_its_case() -> None:
    manifest = Manifest(xml=(FIXTURES / "manifest_wisc_c220g1_5node_mixedcase_logins.xml")
                        .read_text())
    for node in _convert.to_nodes(manifest, "bucketxv"):
        assert node.ssh.user == "BucketXv"  # not kyleshu, the first login listed


def test_a_user_absent_from_the_logins_is_refused() -> None:
    manifest = Manifest(xml=(FIXTURES / "manifest_wisc_c220g1_5node_mixedcase_logins.xml")
                        .read_text())
    with pytest.raises(ProviderError) as refused:
        _convert.to_nodes(manifest, "mallory")
    message = str(refused.value)
    assert "'mallory'" in message and "BucketXv" in message and "kyleshu" in message
    assert "certificate" in message  # says what to do


def test_non_pc_nodes_and_zero_macs_are_left_out() -> None:
    manifest = Manifest(xml=(FIXTURES / "derived_wisc_blockstore_switch_zero_mac.xml")
                        .read_text())
    ids = [node.id for node in _convert.to_nodes(manifest, "BucketXv")]
    assert "dsnode" not in ids and "sw0" not in ids
    (zeroed,) = [nic for node in ids for nic in _convert.to_nics(manifest, node)
                 if nic.name == "interface-7"]  # mac_address="000000000000" in the file
    assert zeroed.mac == ""


def _device(name: str, mac: str, *addresses: str) -> dict:
    """One device as `ip -j addr show` prints it."""
    return {"ifname": name, "address": mac, "mtu": 1500, "addr_info": [
        {"family": "inet", "local": a.split("/")[0], "prefixlen": int(a.split("/")[1]),
         "scope": "global"} for a in addresses]}


def test_without_a_default_route_the_control_nic_holds_the_manifest_address() -> None:
    manifest = Manifest(xml=(FIXTURES / "manifest_utah_c6525-100g_2node_link.xml").read_text())
    nics = _convert.to_nics(manifest, "node0")
    links = [_device("lo", "00:00:00:00:00:00"),
             _device("eno1", "0c:42:a1:00:00:01", "128.110.219.180/21"),
             _device("ens1f0", "0c:42:a1:8b:31:78", "10.10.1.1/24")]
    control, experiment = _convert.on_node(nics, links, [])
    assert (control.name, control.addresses) == ("eno1", ("128.110.219.180/21",))
    assert (experiment.name, experiment.addresses) == ("ens1f0", ("10.10.1.1/24",))
    assert _convert.on_node(nics, links[:2], []) == [control]  # its MAC is not on the node
    with pytest.raises(ProviderError, match="no default route"):
        _convert.on_node(nics, links[2:], [])
