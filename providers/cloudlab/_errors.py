"""Turn geni-lib's exceptions (and ProtoGENI's error codes) into omnibed's typed errors.

ProtoGENI answers with an `am_code`; geni-lib's `pgutil.raiseError` turns the ones below
into exception classes, which `map_geni_errors` maps in turn:

    14 ResourceBusyError           -> ReservationError (busy: try again later)
    24 VLANUnavailableError        -> ReservationError
    25 InsufficientBandwidthError  -> ReservationError
    26 InsufficientNodesError      -> ReservationError
    27 InsufficientMemoryError     -> ReservationError
    28 NoMappingError              -> ReservationError (the request cannot be mapped at all)
    12 (GENI SEARCHFAILED)         -> ReservationNotFound (no such slice or sliver)
    3, 15 (GENI FORBIDDEN, EXPIRED) -> CredentialsError (refused or expired credential)
    other ProtoGENIError / AMError -> ProviderError
    clearinghouse code 1 or 2      -> CredentialsError, other codes -> ProviderError
    key decryption, expired user credential -> CredentialsError
    expired slice credential       -> ReservationNotFound (the slice, and its sliver, ended)
    TLS failure                    -> CredentialsError (the certificate)
    HTTP error, connection failure -> ProviderError saying to retry
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from omnibed.core.errors import (
    CredentialsError,
    OmnibedError,
    ProviderError,
    ReservationError,
    ReservationNotFound,
)

PROVIDER = "cloudlab"

# ProtoGENI error codes (GeniResponse.pm) that say "not now / not with these resources".
NO_CAPACITY = {
    14: "the aggregate is busy with another operation on this slice; try again in a minute",
    24: "no VLAN is free for the requested links",
    25: "not enough bandwidth for the requested links",
    26: "not enough free nodes of the requested type",
    27: "not enough memory on the shared hosts for the requested VMs",
    28: "the request could not be mapped onto the aggregate's resources",
}
SEARCH_FAILED = 12  # GENI AM API: no such slice or sliver
GONE_FIX = "`omnibed release` it to forget it, and reserve again"
CH_AUTH_CODES = {1, 2}  # CHAPI AUTHENTICATION_ERROR, AUTHORIZATION_ERROR
AM_AUTH_CODES = {3: "refused", 15: "expired"}  # GENI AM API FORBIDDEN, EXPIRED


def am_code(error: BaseException) -> int | None:
    """The ProtoGENI `am_code` (or GENI `geni_code`) carried by a geni-lib AMError."""
    data = getattr(error, "data", None)
    if not isinstance(data, dict):
        return None
    code = data.get("code", {})
    if isinstance(code, dict):
        return code.get("am_code", code.get("geni_code"))
    return code if isinstance(code, int) else None


def _text(error: BaseException) -> str:
    url = getattr(error, "error_url", None)
    text = str(error) or type(error).__name__
    return f"{text} (details: {url})" if url else text


@contextlib.contextmanager
def map_geni_errors(action: str, pem: str = "cloudlab.pem") -> Iterator[None]:
    """Re-raise what geni-lib raises during `action` as an omnibed error saying what to do."""
    import requests
    from geni.aggregate.context import Context, SliceCredInfo
    from geni.aggregate.exceptions import AMError
    from geni.aggregate.frameworks import ClearinghouseError, Framework, KeyDecryptionError

    try:
        yield
    except OmnibedError:
        raise
    except AMError as error:
        code = am_code(error)
        if code == SEARCH_FAILED:
            raise ReservationNotFound(
                f"{action}: CloudLab has no such sliver (expired or released); {GONE_FIX}",
                provider=PROVIDER,
                testbed_message=_text(error),
            ) from error
        if code in AM_AUTH_CODES:
            raise CredentialsError(
                f"{action}: the aggregate says your credential is {AM_AUTH_CODES[code]}"
                f" ({_text(error)}); download a fresh cloudlab.pem from the portal and retry",
                source=pem,
            ) from error
        if code in NO_CAPACITY:
            raise ReservationError(
                f"{action} refused: {NO_CAPACITY[code]} (ProtoGENI code {code})",
                provider=PROVIDER,
                testbed_message=_text(error),
            ) from error
        raise ProviderError(
            f"{action} failed at the aggregate: {_text(error)}; retry in a few minutes",
            provider=PROVIDER,
            testbed_message=_text(error),
        ) from error
    except ClearinghouseError as error:
        code = error.data.get("code") if isinstance(error.data, dict) else None
        if code in CH_AUTH_CODES:
            raise CredentialsError(
                f"{action}: the CloudLab slice authority refused your credentials ({error});"
                f" download a fresh cloudlab.pem from the portal",
                source=pem,
            ) from error
        raise ProviderError(
            f"{action} failed at the CloudLab slice authority: {error}",
            provider=PROVIDER,
            testbed_message=str(error),
        ) from error
    except (KeyDecryptionError, Framework.KeyPathError) as error:
        raise CredentialsError(
            f"the private key in {pem} could not be decrypted: set OMNIBED_CLOUDLAB_PASSPHRASE"
            " or passphrase_file (the passphrase is your CloudLab portal password)",
            source=pem,
        ) from error
    except SliceCredInfo.CredentialExpiredError as error:
        # the slice itself has expired, and its sliver with it: nothing is wrong with the pem
        raise ReservationNotFound(
            f"{action}: its slice expired on {error.expires} UTC and CloudLab freed its"
            f" nodes; {GONE_FIX}",
            provider=PROVIDER,
            testbed_message=str(error),
        ) from error
    except Context.UserCredExpiredError as error:
        raise CredentialsError(
            f"{action}: {error}; download a fresh cloudlab.pem from the portal", source=pem
        ) from error
    except requests.exceptions.SSLError as error:
        raise CredentialsError(
            f"{action}: the TLS handshake with CloudLab failed ({error}); check that {pem}"
            " holds a valid, unexpired certificate",
            source=pem,
        ) from error
    except requests.exceptions.HTTPError as error:
        status = error.response.status_code if error.response is not None else "error"
        raise ProviderError(
            f"{action}: CloudLab answered HTTP {status}, a failure on its side; retry in a"
            " few minutes",
            provider=PROVIDER,
            testbed_message=str(error),
        ) from error
    except requests.exceptions.RequestException as error:
        raise ProviderError(
            f"{action}: cannot reach CloudLab ({error}); check the network or the URL and"
            " retry",
            provider=PROVIDER,
            testbed_message=str(error),
        ) from error
