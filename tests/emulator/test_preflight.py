"""The preflight's capacity check on this machine: vnodes that cannot fit the pnode's
memory or its network-namespace limit are refused, in one sentence, before any change."""

from __future__ import annotations

import pytest

from omnibed.core.errors import PreflightError
from omnibed.emulator.agent.preflight import (
    MAX_NET_NAMESPACES,
    MEMINFO,
    VNODE_MEMORY_KIB,
    preflight,
)
from omnibed.emulator.agent.state import PnodeState

pytestmark = pytest.mark.root


def mem_available_kib() -> int:
    with open(MEMINFO) as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))


def state(vnodes: int) -> PnodeState:
    names = tuple(f"ob-000000-p0-v{i}" for i in range(vnodes))
    return PnodeState(instance="capacity", pnode="pnode-1", group=7, namespaces=names)


def test_more_vnodes_than_memory_is_refused_in_one_sentence() -> None:
    too_many = mem_available_kib() // VNODE_MEMORY_KIB + 1000
    problems = preflight(state(too_many))
    memory = [p for p in problems if "of memory" in p]
    assert len(memory) == 1, problems
    assert f"{too_many} vnodes need about" in memory[0] and "\n" not in memory[0]
    assert "reserve more pnodes" in memory[0]


def test_more_vnodes_than_network_namespaces_is_refused() -> None:
    with open(MAX_NET_NAMESPACES) as limit:
        allowed = int(limit.read())
    problems = preflight(state(allowed + 1))
    assert any(f"this kernel allows {allowed}" in p for p in problems), problems


def test_vnodes_that_fit_pass() -> None:
    assert preflight(state(10)) == []


def test_a_refusal_on_several_pnodes_is_one_line() -> None:
    refused = PreflightError({"pnode-1": ["too little memory", "no netem"], "pnode-2": ["x"]})
    assert "\n" not in str(refused)
    assert "pnode-1: too little memory; no netem" in str(refused) and "pnode-2: x" in str(refused)
