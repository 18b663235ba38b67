"""The agent bundle on a pnode is run as root only from a directory only root can write and
only when its sha256, computed on the pnode, is the one omnibed built: an unprivileged user
on a local-testbed pnode cannot make root run their code nor overwrite a file through a link.

Every step on the pnode goes through SSH (`api.run`), so it holds whether local pnodes share
the host's filesystem or not.
"""

from __future__ import annotations

import hashlib
import shlex
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from omnibed.api import Omnibed
from omnibed.core.errors import EmulatorError
from omnibed.emulator.agent import ops
from omnibed.emulator.bundle import Bundle, build
from omnibed.emulator.transport import AGENT_DIR, AgentSession

pytestmark = pytest.mark.root

AS_NOBODY = "setpriv --reuid=nobody --regid=nogroup --clear-groups"


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return build()


@pytest.fixture
def pnode(tmp_path: Path) -> Iterator[tuple[Omnibed, str]]:
    """(api, reservation name) of one reserved local pnode, released at the end."""
    api = Omnibed(home=tmp_path / "home")
    request = api.make_request("local", nodes=1, walltime=timedelta(hours=1))
    api.reserve("local", request)
    try:
        api.wait(request.name)
        yield api, request.name
    finally:
        api.release(request.name)


@pytest.fixture
def pnode_dir(pnode: tuple[Omnibed, str]) -> Iterator[str]:
    """A fresh directory on the pnode (root's, 0700), removed at the end."""
    api, name = pnode
    directory = on_pnode(api, name, "mktemp -d").strip()
    try:
        yield directory
    finally:
        on_pnode(api, name, f"rm -rf {directory}")


def on_pnode(api: Omnibed, name: str, command: str) -> str:
    """Run `command` as root on the pnode; its stdout (a failure fails the test)."""
    [result] = api.run(name, command).values()
    assert result.exit_status == 0, result.stderr
    return result.stdout


def session(api: Omnibed, name: str, bundle: Bundle, **options: str) -> AgentSession:
    return AgentSession(api.root_endpoint(name, "pnode-1"), api.known_hosts(name),
                        bundle=bundle, **options)


def test_a_bundle_planted_by_another_user_is_not_run(
    pnode: tuple[Omnibed, str], bundle: Bundle
) -> None:
    api, name = pnode
    marks = f"/tmp/omnibed-marks-{uuid.uuid4().hex[:8]}"
    victim = f"/tmp/omnibed-victim-{uuid.uuid4().hex[:8]}"
    code = f"open({marks + '/ran-as-'!r} + str(__import__('os').getuid()), 'w')\n"
    places = [f"/tmp/{bundle.remote_name}", f"{AGENT_DIR}/{bundle.remote_name}"]
    plant = (  # a script of the bundle's size, and a link to the victim named as an upload
        "import os, sys\n"
        "code, size, victim, places = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]\n"
        "for place in places:\n"
        "    try:\n"
        "        open(place, 'w').write(code + '#' * (size - len(code)))\n"
        "        os.symlink(victim, place + '.part')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    argv = ["/usr/bin/python3", "-c", plant, code, str(len(bundle.data)), victim, *places]
    on_pnode(api, name, f"mkdir -m 1777 {marks} && echo precious > {victim}"
                        f" && {AS_NOBODY} {shlex.join(argv)}")
    try:
        with session(api, name, bundle) as agent:
            assert agent.call(ops.HELLO)["pyroute2"]
        assert on_pnode(api, name, f"ls -A {marks}") == "", "the planted code ran"
        assert on_pnode(api, name, f"cat {victim}") == "precious\n"
        stored = on_pnode(api, name, f"sha256sum {AGENT_DIR}/{bundle.remote_name}")
        assert stored.split()[0] == hashlib.sha256(bundle.data).hexdigest()
        owner_mode = on_pnode(api, name, f"stat -c '%U %a %F' {AGENT_DIR}")
        assert owner_mode == "root 700 directory\n"
    finally:
        on_pnode(api, name, f"rm -rf {marks} {victim} " + " ".join(
            f"/tmp/{bundle.remote_name}{suffix}" for suffix in ("", ".part")))


def test_a_damaged_bundle_is_replaced_before_it_runs(
    pnode: tuple[Omnibed, str], bundle: Bundle, pnode_dir: str
) -> None:
    api, name = pnode
    directory = f"{pnode_dir}/agent"
    stored = f"{directory}/{bundle.remote_name}"
    on_pnode(api, name, f"mkdir -m 700 {directory} && head -c {len(bundle.data)} /dev/zero"
                        f" > {stored}")
    with session(api, name, bundle, agent_dir=directory) as agent:
        assert agent.call(ops.HELLO)["ok"]
    copied = on_pnode(api, name, f"sha256sum {stored}").split()[0]
    assert copied == bundle.sha256
    assert on_pnode(api, name, f"ls -A {directory}") == f"{bundle.remote_name}\n"


@pytest.mark.parametrize(
    ("prepare", "refusal"),
    [
        ("mkdir -m 700 {d} && chown nobody {d}", "owned by uid 65534"),
        ("mkdir -m 770 {d}", "writable by others"),
        ("mkdir -m 700 {d}.real && ln -s {d}.real {d}", "symlink"),
        ("mkdir -m 777 {d}.up && mkdir -m 700 {d}.up/agent && ln -s {d}.up/agent {d}",
         "symlink"),
        ("mkdir -m 777 {d}", "writable by others"),
    ],
)
def test_an_agent_directory_others_could_write_is_refused(
    pnode: tuple[Omnibed, str], bundle: Bundle, pnode_dir: str, prepare: str, refusal: str
) -> None:
    api, name = pnode
    directory = f"{pnode_dir}/agent"
    on_pnode(api, name, prepare.format(d=directory))
    with pytest.raises(EmulatorError, match=refusal) as refused:
        session(api, name, bundle, agent_dir=directory)
    assert directory in str(refused.value)
    assert "\n" not in str(refused.value)
    listing = on_pnode(api, name, f"find {directory}/ -name '*.pyz*'")
    assert listing == "", "a bundle was written to an unsafe directory"
