"""Turn openstacksdk and keystoneauth exceptions into omnibed's typed errors.

    a login without a project (no catalogue)      -> CredentialsError saying to set one
    a service or region missing in the catalogue  -> ProviderError naming both
    401, auth plugin or clouds.yaml problems      -> CredentialsError
    timeouts (connect or read)                    -> ProviderTimeout
    quota exceeded, "not enough hosts available"  -> ReservationError
    404                                           -> ReservationNotFound
    5xx, connection failure                       -> ProviderError saying to retry
    any other HTTP error                          -> ProviderError (with the service's words)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from omnibed.core.errors import (
    CredentialsError,
    ProviderError,
    ProviderTimeout,
    ReservationError,
    ReservationNotFound,
)

PROVIDER = "chameleon"
_NO_CAPACITY = re.compile(r"quota exceeded|overquota|not enough \w+ available", re.I)
_NO_ENDPOINT = re.compile(r"(\w+) endpoint for ([\w-]+) service in (\S+) region not found")
SERVICE_NAMES = {"reservation": "Blazar", "compute": "Nova", "network": "Neutron",
                 "image": "Glance", "identity": "Keystone"}


def _missing_service(words: str, action: str) -> ProviderError | None:
    """The error naming the service and region the catalogue lacks, if that is the problem."""
    found = _NO_ENDPOINT.search(words)
    if found is None:
        return None
    interface, service, region = found.groups()
    name = SERVICE_NAMES.get(service, service)
    return ProviderError(
        f"the cloud's catalogue has no {interface} {service} ({name}) endpoint in region"
        f" {region}, needed to {action}: pass -o site= with a region that offers {name}"
        " (bare-metal leases need a CHI@ site, e.g. CHI@UC or CHI@TACC), or check the"
        " `cloud`/`region_name` of your clouds.yaml", provider=PROVIDER, testbed_message=words)


def _words(error: BaseException) -> str:
    details = getattr(error, "details", None)
    return str(details or error).strip()


def _innermost(error: BaseException) -> BaseException:
    """openstacksdk wraps keystoneauth errors (e.g. a 401 at login) in SDKException."""
    inner = error.__cause__ or error.__context__
    while isinstance(inner, sdk.SDKException | ksa.ClientException):
        error, inner = inner, inner.__cause__ or inner.__context__
    return error


def translate(error: BaseException, action: str) -> Exception:
    """The omnibed error for an SDK error raised while doing `action`."""
    words = _words(error)
    error = _innermost(error)
    status = getattr(error, "status_code", None) or getattr(error, "http_status", None)
    if isinstance(error, ksa.Unauthorized) or status == 401:
        return CredentialsError(
            f"Chameleon refused the credentials while trying to {action} ({words}): check "
            "that the application credential is not expired or revoked", source="credentials")
    if "service catalog is empty" in words:  # Keystone's answer to a login without scope
        return CredentialsError(
            f"the login gave no service catalogue while trying to {action}: a password login"
            " needs a project; set OS_PROJECT_NAME (and OS_PROJECT_DOMAIN_NAME), or"
            " project_name in clouds.yaml", source="clouds.yaml")
    missing = _missing_service(words, action)
    if missing is not None:
        return missing
    if isinstance(error, ksa.MissingRequiredOptions | ksa.AuthPluginException
                  | sdk.ConfigException):
        return CredentialsError(
            f"the OpenStack credentials are incomplete ({words}): fix clouds.yaml, the "
            "OpenRC file or the OS_* variables", source="clouds.yaml")
    if isinstance(error, ksa.ConnectTimeout | ksa.RequestTimeout | sdk.ResourceTimeout):
        return ProviderTimeout(
            f"Chameleon did not answer in time while trying to {action}: retry later or "
            "raise -o api_timeout=", provider=PROVIDER, testbed_message=words)
    if isinstance(error, ksa.ConnectionError):
        return ProviderError(
            f"Chameleon could not reach the API while trying to {action} ({words}): check "
            "the network and retry", provider=PROVIDER, testbed_message=words)
    if _NO_CAPACITY.search(words):
        return ReservationError(
            f"Chameleon has no room to {action}: {words}; ask for fewer nodes, another "
            "node_type or site, or free some of your resources", provider=PROVIDER,
            testbed_message=words)
    if isinstance(error, sdk.NotFoundException | ksa.NotFound) or status == 404:
        return ReservationNotFound(f"Chameleon has no such object ({action}): {words}",
                                   provider=PROVIDER, testbed_message=words)
    if isinstance(error, ksa.EndpointNotFound | sdk.EndpointNotFound):
        return ProviderError(
            f"this cloud has no endpoint to {action} ({words}): check -o site= (the region)",
            provider=PROVIDER, testbed_message=words)
    if isinstance(status, int) and status >= 500:
        return ProviderError(
            f"Chameleon failed to {action} (HTTP {status}): {words}; a failure on its side: "
            "retry in a few minutes", provider=PROVIDER, testbed_message=words)
    return ProviderError(f"Chameleon failed to {action}: {words}; check the request and retry",
                         provider=PROVIDER, testbed_message=words)


@contextlib.contextmanager
def map_sdk_errors(action: str) -> Iterator[None]:
    """Re-raise SDK and keystoneauth errors as omnibed errors; `action` goes in the message."""
    try:
        yield
    except (sdk.SDKException, ksa.ClientException) as error:
        raise translate(error, action) from error
