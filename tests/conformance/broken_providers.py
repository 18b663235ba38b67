"""statichosts with one contract rule broken each, to show the suite catches it."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from omnibed.core.errors import ReservationNotFound
from omnibed.core.types import Reservation, ReservationState
from omnibed_statichosts import StaticHostsProvider
from omnibed_statichosts.claims import Claim


class ReleaseNotIdempotent(StaticHostsProvider):
    """Releasing twice raises, as a testbed API answering 404 on a deleted lease would."""

    def release(self, reservation: Reservation) -> None:
        if self.find(reservation.name) is None:
            raise ReservationNotFound(f"{reservation.name} is already released")
        super().release(reservation)


class ForgetsTheKeys(StaticHostsProvider):
    """Release frees the claim but leaves the reservation's key for root on the hosts: find
    says it is gone while its key still logs in, as a provider that drops its record of a
    machine it never stopped would."""

    def release(self, reservation: Reservation) -> None:
        with self.claims.locked() as claims:
            claims.pop(reservation.name, None)


class DuplicatingReserve(StaticHostsProvider):
    """Never looks for an existing reservation of the same name."""

    @staticmethod
    def _existing(claims: dict[str, Claim], name: str) -> Claim | None:
        return None


class LocalTimeAsUTC(StaticHostsProvider):
    """Reads the testbed's wall clock (Tokyo) and labels it UTC: off by nine hours."""

    def _reservation(self, claim: Claim) -> Reservation:
        right = super()._reservation(claim)
        tokyo = ZoneInfo("Asia/Tokyo")
        return Reservation(
            provider=right.provider, id=right.id, name=right.name, state=right.state,
            start=right.start.astimezone(tokyo).replace(tzinfo=UTC),
            end=right.end.astimezone(tokyo).replace(tzinfo=UTC),
        )


class NaiveTimes(StaticHostsProvider):
    """Builds its reservations from naive datetimes (the Reservation type refuses them)."""

    def _reservation(self, claim: Claim) -> Reservation:
        naive = datetime.fromisoformat(claim.start).replace(tzinfo=None)
        return Reservation(
            provider=self.name, id=claim.id, name=claim.name, start=naive, end=naive,
            state=ReservationState.READY,
        )
