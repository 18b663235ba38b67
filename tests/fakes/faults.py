"""Faults a fake testbed can be told to make, the same way for every fake.

Each fake testbed of omnibed's tests (Grid'5000 REST, ProtoGENI XML-RPC, OpenStack) holds a
`Faults` and asks it, for every request it receives, whether that request must fail:

    fake.faults.fail("POST", r"/jobs$")                  # one HTTP 500 (or a testbed error)
    fake.faults.fail("POST", r"/jobs$", times=None)      # a 500 until `clear()`
    fake.faults.delay("GET", r"/jobs/\\d+$", 2.0)          # handled, answered 2 s late
    fake.faults.drop("DELETE", r"/jobs/\\d+$")             # connection closed, no answer
    fake.faults.revoke("GET", r"/jobs/\\d+$")              # credentials refused from then on
    fake.faults.clear()                                  # the testbed is well again

`method` is the HTTP method, or the XML-RPC method name for ProtoGENI; `path` a regular
expression searched in the request's path. `skip` lets that many matching requests through
first. Every fault has an `arrived` event, set when a request matches it, so that a test can
act (e.g. SIGKILL the omnibed command) while the request is being answered.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler


@dataclass
class Fault:
    """One rule: what happens to the requests `method path` once `skip` of them went by.

    `kind` is "fail" (answer `status`, or the testbed's own error `code`, with `message`),
    "delay" (handle, then answer `seconds` late), "drop" (close the connection unanswered)
    or "revoke" (from this request on, the credentials are refused).
    """

    kind: str
    method: str
    path: re.Pattern[str]
    times: int | None = 1  # None: until cleared
    skip: int = 0
    status: int = 500
    code: int | None = None
    message: str = "internal error (injected by the test)"
    seconds: float = 0.0
    arrived: threading.Event = field(default_factory=threading.Event)
    cleared: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        return self.method in (method, "*") and self.path.search(path) is not None

    def wait_late(self) -> None:
        """Sleep `seconds`, or less if the faults are cleared meanwhile."""
        self.cleared.wait(self.seconds)


class Faults:
    """The faults armed on one fake testbed; thread-safe (fakes serve in threads)."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()
        self.revoked = False

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._rules.append(fault)
        return fault

    def fail(self, method: str, path: str = "", *, status: int = 500, code: int | None = None,
             message: str = "", times: int | None = 1, skip: int = 0) -> Fault:
        """Answer HTTP `status` (or, with `code`, the testbed's own error with that code)."""
        return self._add(Fault("fail", method, re.compile(path), times, skip, status, code,
                               message or f"internal error {status} (injected by the test)"))

    def delay(self, method: str, path: str, seconds: float, *, times: int | None = 1,
              skip: int = 0) -> Fault:
        """Handle the request, then answer `seconds` late (past a short client timeout)."""
        return self._add(Fault("delay", method, re.compile(path), times, skip, seconds=seconds))

    def drop(self, method: str, path: str, *, times: int | None = 1, skip: int = 0) -> Fault:
        """Close the connection without handling or answering the request."""
        return self._add(Fault("drop", method, re.compile(path), times, skip))

    def revoke(self, method: str = "*", path: str = "", *, skip: int = 0) -> Fault:
        """From the first matching request on, refuse the credentials (expired or revoked)."""
        return self._add(Fault("revoke", method, re.compile(path), 1, skip))

    def clear(self) -> None:
        """Disarm every fault, answer delayed requests now and accept the credentials again."""
        with self._lock:
            for fault in self._rules:
                fault.cleared.set()
            self._rules.clear()
            self.revoked = False

    def take(self, method: str, path: str) -> Fault | None:
        """The fault this request meets, if any (a "revoke" is applied here and not returned)."""
        with self._lock:
            for fault in self._rules:
                if not fault.matches(method, path) or fault.times == 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                if fault.times is not None:
                    fault.times -= 1
                fault.arrived.set()
                if fault.kind == "revoke":
                    self.revoked = True
                    return None
                return fault
        return None


def drop_connection(handler: BaseHTTPRequestHandler) -> None:
    """Close the client's connection at once, without an answer (a dropped connection)."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
