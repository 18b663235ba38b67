"""The local testbed's machine-wide lock: no other user can hold it, a stuck holder is named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from omnibed.core.errors import ProviderError
from omnibed.providers.local import state
from tests.local.support import needs_root, reserve_in_child

pytestmark = [pytest.mark.root, needs_root]

OLD_LOCK = Path("/run/lock/omnibed-local.lock")  # world-writable directory, any user's
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
HOLD = (
    "from omnibed.providers.local.state import machine_lock\n"
    "import time\n"
    "with machine_lock():\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


@contextmanager
def holding(argv: list[str]) -> Iterator[subprocess.Popen]:
    """Run `argv` (which prints `held` once it holds its lock) until the block ends; then
    kill its whole process group, so that no child goes on holding the lock."""
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_another_user_holding_the_old_lock_path_does_not_block_reserve(tmp_path: Path) -> None:
    hold = ["flock", "--nonblock", "--no-fork", str(OLD_LOCK), "sh", "-c",
            "echo held; exec sleep 600"]
    planted = not OLD_LOCK.exists()
    try:
        with holding([*NOBODY, *hold]):
            done = reserve_in_child(tmp_path / "state", f"t-lock-{uuid.uuid4().hex[:6]}", 30)
    finally:
        if planted:
            OLD_LOCK.unlink(missing_ok=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("reserved obl"), done.stdout


def test_a_holder_that_never_lets_go_is_named_after_the_timeout(tmp_path: Path) -> None:
    with holding([sys.executable, "-c", HOLD]) as holder:
        done = reserve_in_child(tmp_path / "state", f"t-lock-{uuid.uuid4().hex[:6]}", 1)
    message = done.stdout.strip()
    assert done.returncode == 1, message + done.stderr
    assert "\n" not in message
    assert "the local testbed is busy" in message
    assert f"process {holder.pid} ({sys.executable} -c from omnibed" in message
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_nobody_can_create_or_plant_the_lock(tmp_path: Path) -> None:
    with state.machine_lock(timeout=5):
        pass  # makes the directory
    info = state.LOCK_DIR.lstat()
    assert (info.st_uid, info.st_mode & 0o7777) == (0, 0o700)
    planted = subprocess.run(
        [*NOBODY, "touch", str(state.LOCK_DIR / "x.lock")], capture_output=True, text=True
    )
    assert planted.returncode != 0 and "Permission denied" in planted.stderr


@pytest.mark.parametrize("how", ["owned by nobody", "group-writable", "symlink"])
def test_a_lock_directory_others_control_is_refused(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "lock"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "elsewhere")
    else:
        directory.mkdir(mode=0o700)
        if how == "owned by nobody":
            os.chown(directory, 65534, 65534)
        else:
            directory.chmod(0o770)
    with pytest.raises(ProviderError, match="must be a directory owned by root with mode 0700"):
        with state.machine_lock(timeout=1, directory=directory):
            pass
    assert not (directory / state.LOCK_NAME).exists()
    assert not (tmp_path / "elsewhere" / state.LOCK_NAME).exists()
