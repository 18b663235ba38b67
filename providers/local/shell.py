"""Running the system tools the local testbed is built with (ip, bridge, ssh-keygen, sshd)."""

from __future__ import annotations

import subprocess

from omnibed.core.errors import ProviderError


def run(*args: str, timeout: float = 30) -> str:
    """Run `args`, return its stdout; a failure raises ProviderError with the tool's message."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ProviderError(
            f"could not run {' '.join(args)}: {error}", provider="local"
        ) from error
    if done.returncode != 0:
        message = done.stderr.strip() or done.stdout.strip()
        raise ProviderError(
            f"{' '.join(args)} failed: {message}", provider="local", testbed_message=message
        )
    return done.stdout
