"""Turn python-grid5000 and requests exceptions into omnibed's typed errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grid5000.exceptions as g5k
import requests

from omnibed.core.errors import CredentialsError, ProviderError, ReservationError
from omnibed.providers.grid5000._convert import PROVIDER, retry_at


def not_found(error: BaseException) -> bool:
    """True when the API answered 404 (the object is gone)."""
    return isinstance(error, g5k.Grid5000Error) and error.response_code == 404


@contextmanager
def map_errors(action: str, config: str, uri: str) -> Iterator[None]:
    """Re-raise any SDK or transport error of `action` as an omnibed error.

    `config` names the credentials file (for a 401), `uri` the API (for transport errors).
    """
    try:
        yield
    except g5k.Grid5000AuthenticationError as error:
        raise CredentialsError(
            f"the Grid'5000 API refused the login in {config} (HTTP 401) while trying to"
            f" {action}: fix `username`/`password` there (mode 0600)",
            source=config,
        ) from error
    except g5k.Grid5000Error as error:
        message = str(error.error_message or error)
        code = f"HTTP {error.response_code}" if error.response_code else type(error).__name__
        text = f"Grid'5000 could not {action} ({code}): {message}"
        when = retry_at(message)
        if when is not None:
            raise ReservationError(
                f"{text}; retry at {when:%Y-%m-%d %H:%M} UTC or ask for that start",
                provider=PROVIDER,
                testbed_message=message,
                retry_at=when,
            ) from error
        if (error.response_code or 0) >= 500:
            text += "; the Grid'5000 API failed on its side: retry in a few minutes"
        else:
            text += "; check the request (options: `omnibed providers`) and retry"
        raise ProviderError(text, provider=PROVIDER, testbed_message=message) from error
    except requests.RequestException as error:
        raise ProviderError(
            f"the Grid'5000 API at {uri} did not answer while trying to {action}"
            f" ({type(error).__name__}): check the network and retry",
            provider=PROVIDER,
            testbed_message=str(error),
        ) from error
