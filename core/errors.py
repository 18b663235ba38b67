"""Every error omnibed raises on purpose, each carrying what a user can act on.

OmnibedError
├── UsageError              bad input from the user (CLI exit status 2)
├── CredentialsError        .source: the file or variable to fix
├── NotSupported            .provider, .verb: the testbed cannot do this
├── PluginLoadError         .plugin: a third-party provider failed to load
├── LedgerError             .path: the ledger is damaged or locked by another process
├── ProviderError           .provider, .testbed_message: the testbed said no
│   ├── ReservationError    .retry_at: when the testbed proposes to try again (UTC)
│   ├── ReservationNotFound
│   ├── ReleaseFailed       .name: releasing after a failure failed; still live and recorded
│   └── ProviderTimeout     a wait ran out of time
├── SSHError                .host: could not log in or run a command
│   └── HostKeyMismatch     a node's host key changed since first contact
└── EmulatorError           the virtual platform could not be built
    ├── PlatformError       .where, .origin: the platform description is wrong or does not
    │                       fit the pnodes (before any change; also a UsageError)
    ├── PreflightError      .missing: {pnode: [what is missing]} (nothing changed)
    └── ApplyError          .failures: {pnode: message} (rolled back)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime


class OmnibedError(Exception):
    """Base of every omnibed error; its message says what to do."""


class UsageError(OmnibedError):
    """The user asked for something malformed or impossible; nothing was changed."""


class CredentialsError(OmnibedError):
    """Credentials are missing, unreadable or refused; `source` names the file or variable."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class NotSupported(OmnibedError):
    """The provider does not implement `verb` (its capabilities say so)."""

    def __init__(self, provider: str, verb: str, detail: str = "") -> None:
        text = f"the {provider} testbed does not support {verb}"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.provider = provider
        self.verb = verb


class PluginLoadError(OmnibedError):
    """A provider plugin could not be imported or registered."""

    def __init__(self, plugin: str, cause: BaseException) -> None:
        super().__init__(f"provider plugin {plugin!r} failed to load: {cause}")
        self.plugin = plugin
        self.cause = cause


class LedgerError(OmnibedError):
    """The ledger at `path` cannot be used: damaged (a copy is kept) or locked too long."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ProviderError(OmnibedError):
    """The testbed refused or failed; `testbed_message` is its own words."""

    def __init__(
        self, message: str, *, provider: str = "", testbed_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.testbed_message = testbed_message


class ReservationError(ProviderError):
    """The reservation could not be made; `retry_at` (UTC) is when the testbed suggests."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        testbed_message: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        super().__init__(message, provider=provider, testbed_message=testbed_message)
        self.retry_at = retry_at


class ReleaseFailed(ProviderError):
    """Releasing `name` after a failure (`cause`) failed too: it is still live on the
    testbed and kept in the ledger, so `omnibed release` or `omnibed gc` can release it."""

    def __init__(
        self, name: str, *, provider: str, cause: BaseException | None, error: Exception
    ) -> None:
        why = "interrupted" if isinstance(cause, KeyboardInterrupt) else str(cause or "")
        before = f"{why}; " if why and why != str(error) else ""
        super().__init__(
            f"{before}releasing {name} failed ({error}): it is still live on {provider},"
            f" release it with `omnibed release {name}` (`omnibed gc` does once this command"
            " has ended)",
            provider=provider,
        )
        self.name = name


class ReservationNotFound(ProviderError):
    """No reservation of that name or id exists (on the testbed or in the ledger)."""


class ProviderTimeout(ProviderError):
    """A wait on the testbed ran out of time."""


class SSHError(OmnibedError):
    """Logging in to `host` or running a command there failed."""

    def __init__(self, message: str, *, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class HostKeyMismatch(SSHError):
    """The host key of `host` differs from the one recorded at first contact."""


class EmulatorError(OmnibedError):
    """The virtual platform could not be built or torn down."""


class PlatformError(EmulatorError, UsageError):
    """The platform description is invalid or cannot fit the pnodes; raised before anything
    is changed. `where` is the place in the description (`nodes[0].ifaces[1].output.rate`),
    `origin` the file, with `:line:column` when known."""

    def __init__(self, message: str, *, where: str = "", origin: str = "") -> None:
        super().__init__(": ".join(part for part in (origin, where, message) if part))
        self.message = message
        self.where = where
        self.origin = origin

    def within(self, where: str) -> PlatformError:
        """The same error, placed inside `where` (`nodes[0]` + `name` -> `nodes[0].name`)."""
        joined = f"{where}.{self.where}" if self.where else where
        return PlatformError(self.message, where=joined, origin=self.origin)

    def located(self, origin: str) -> PlatformError:
        return PlatformError(self.message, where=self.where, origin=origin)


class PreflightError(EmulatorError):
    """Pnodes lack what the plan needs; `missing` maps pnode to what is missing."""

    def __init__(self, missing: Mapping[str, list[str]]) -> None:
        parts = [f"{pnode}: {'; '.join(items)}" for pnode, items in missing.items()]
        super().__init__("preflight failed, nothing was changed: " + " | ".join(parts))
        self.missing = dict(missing)


class ApplyError(EmulatorError):
    """Applying failed on some pnodes; everything applied was rolled back."""

    def __init__(self, failures: Mapping[str, str], *, rolled_back: bool = True) -> None:
        lines = [f"{pnode}: {why}" for pnode, why in failures.items()]
        tail = (
            "everything applied was rolled back"
            if rolled_back
            else "rollback incomplete: `omnibed emulate down` removes the rest"
        )
        super().__init__(f"apply failed ({tail}):\n  " + "\n  ".join(lines))
        self.failures = dict(failures)
        self.rolled_back = rolled_back
