"""Underlay profiles of the local testbed: what the switch lets through, per testbed it mimics."""

from __future__ import annotations

from dataclasses import dataclass

from omnibed.core.errors import UsageError


@dataclass(frozen=True, slots=True)
class Profile:
    """How the underlay switch treats each pnode's control NIC (`eth0`).

    `foreign_mac`: frames from or to a MAC other than the port's registered one pass.
    `multicast`: multicast frames are delivered to every port.
    `max_extra_nics`: how many plain-L2 extra links (`eth1`) a reservation may ask for.
    """

    name: str
    foreign_mac: bool
    multicast: bool
    max_extra_nics: int
    stands_for: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("baremetal", True, True, 1, "Grid'5000 KaVLAN, Chameleon and CloudLab bare metal"),
        Profile("xen", False, True, 1, "CloudLab Xen VMs"),
        Profile("kvm", False, True, 0, "Chameleon KVM (Neutron port security)"),
        Profile("nomcast", False, False, 1, "clouds that block multicast"),
    )
}
DEFAULT_PROFILE = "baremetal"


def get_profile(name: str) -> Profile:
    """The profile called `name`; a UsageError lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise UsageError(
            f"unknown local profile {name!r}; use -o profile=one of: {known}"
        ) from None


def check_extra_nics(profile: Profile, wanted: int) -> None:
    """Refuse more extra NICs than `profile` can give (with a message saying what to do)."""
    if wanted <= profile.max_extra_nics:
        return
    if profile.name == "kvm":
        raise UsageError(
            "the kvm profile (like Chameleon KVM) cannot add a NIC; use profile xen or baremetal"
        )
    raise UsageError(
        f"the {profile.name} profile gives at most {profile.max_extra_nics} extra NIC, "
        f"not {wanted}; use --extra-nics {profile.max_extra_nics} or less"
    )
