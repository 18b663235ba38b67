"""The OCI configuration of a container vnode, as runc receives it: the agent's network
namespace joined by path, the vnode's name as hostname, limits as OCI resources, and no
capability that would let root in the vnode change the emulated network or the pnode."""

from __future__ import annotations

from omnibed.emulator.agent import oci


def _config(**limits: object) -> dict:
    return oci.config(
        hostname="vnode-3",
        netns="/run/netns/ob-vnode-3",
        cgroups_path="/omnibed-vnode-x",
        ssh_dir=None,
        **limits,  # type: ignore[arg-type]
    )


def test_joins_the_network_namespace_by_path_and_owns_the_others() -> None:
    config = _config()
    namespaces = {ns["type"]: ns.get("path") for ns in config["linux"]["namespaces"]}
    assert namespaces == {
        "pid": None, "mount": None, "ipc": None, "uts": None, "network": "/run/netns/ob-vnode-3",
    }  # fmt: skip
    assert config["hostname"] == "vnode-3"
    assert config["linux"]["cgroupsPath"] == "/omnibed-vnode-x"


def test_share_is_a_quota_of_the_pinned_cores_or_of_one_core() -> None:
    one = _config(share=0.5)["linux"]["resources"]["cpu"]
    assert (one["quota"], one["period"]) == (50_000, 100_000) and "cpus" not in one
    two = _config(share=0.25, cpus=[3, 1])["linux"]["resources"]["cpu"]
    assert (two["quota"], two["cpus"]) == (50_000, "1,3")


def test_memory_limit_includes_swap_only_where_the_pnode_swaps() -> None:
    assert _config(memory=64 << 20)["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    swapping = _config(memory=64 << 20, swap=True)["linux"]["resources"]["memory"]
    assert swapping == {"limit": 64 << 20, "swap": 64 << 20}
    assert "memory" not in _config()["linux"]["resources"]


def test_sshd_is_init_with_the_bundle_keys_bound_read_only() -> None:
    config = oci.config(
        hostname="v", netns="/run/netns/v", cgroups_path="/omnibed-vnode-v", ssh_dir="/b/ssh"
    )
    assert config["process"]["args"][0] == "/usr/sbin/sshd"
    keys = [m for m in config["mounts"] if m["destination"] == oci.SSH_DIR]
    assert [(m["type"], m["source"], m["options"][:2]) for m in keys] == [
        ("bind", "/b/ssh", ["bind", "ro"])
    ]
    assert _config()["process"]["args"][0] == "/bin/sh"


def test_root_in_the_vnode_cannot_reconfigure_the_network_or_the_pnode() -> None:
    capabilities = _config()["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert not {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_MODULE"} & set(capabilities[kind])


def test_a_shared_image_is_an_overlay_runc_mounts_on_root_first() -> None:
    config = _config(overlay=("/i/rootfs", "/b/upper", "/b/work"))
    first = config["mounts"][0]
    assert (first["destination"], first["type"]) == ("/", "overlay")
    assert first["options"] == ["lowerdir=/i/rootfs", "upperdir=/b/upper", "workdir=/b/work"]
    assert config["root"]["path"] == "rootfs"
    assert all(m["type"] != "overlay" for m in _config()["mounts"])
