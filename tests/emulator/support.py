"""Helpers of the emulator's root tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from omnibed.emulator.agent import nsutil

T = TypeVar("T")


def in_fresh_netns(work: Callable[[], T]) -> T:
    """Run `work` in a thread moved into a new network namespace; it dies with the thread
    (nothing mounted), taking every link made in it along. Subprocesses started by `work`
    inherit it."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            nsutil.unshare_net()
            results.append(work())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="omnibed-test-netns")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]
