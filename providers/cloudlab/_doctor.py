"""`omnibed doctor --testbed cloudlab`: what is installed and which credentials are found.

Nothing here contacts CloudLab or asks for the passphrase.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from omnibed.core.provider import Check
from omnibed.providers.cloudlab._settings import Settings


def _library() -> Check:
    try:
        import six  # noqa: F401 -- geni-lib imports it without declaring it
        from geni.aggregate import cloudlab  # noqa: F401
    except ImportError as error:
        return Check(
            "geni-lib importable", False, str(error),
            "pip install 'omnibed[cloudlab]' (geni-lib 0.9.9.4, setuptools<81, six)",
        )
    return Check("geni-lib importable", True)


def _certificate(settings: Settings) -> list[Check]:
    from cryptography import x509

    if settings.context is not None:
        ok = settings.context.exists()
        return [Check(f"geni-lib context {settings.context}", ok, "" if ok else "missing",
                      "" if ok else "fix `context =` in " + str(settings.config))]
    pem = settings.pem
    if not pem.exists():
        return [Check(
            f"CloudLab certificate {pem}", False, "missing",
            f"download cloudlab.pem from the portal (Download Credentials) to {pem}, or set"
            f" pem= in {settings.config} or OMNIBED_CLOUDLAB_PEM",
        )]
    data = pem.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as error:
        return [Check(f"CloudLab certificate {pem}", False, str(error),
                      "download cloudlab.pem again from the portal")]
    expires = cert.not_valid_after_utc
    fresh = expires > datetime.now(UTC)
    checks = [Check(
        f"CloudLab certificate {pem}", fresh, f"expires {expires:%Y-%m-%d %H:%M} UTC",
        "" if fresh else "download a fresh cloudlab.pem from the portal",
    )]
    if pem.stat().st_mode & 0o077:
        checks.append(Check(f"{pem} permissions", False, "readable by others",
                            f"chmod 600 {pem}"))
    if b"ENCRYPTED" in data:
        have = bool(os.environ.get("OMNIBED_CLOUDLAB_PASSPHRASE")) or bool(
            settings.passphrase_file and settings.passphrase_file.exists()
        )
        checks.append(Check(
            "key passphrase", have,
            "found" if have else "the key is encrypted; omnibed will prompt on a terminal",
            "" if have else "set OMNIBED_CLOUDLAB_PASSPHRASE or passphrase_file (0600)",
        ))
    return checks


def checks(settings: Settings) -> list[Check]:
    """Library, certificate, passphrase and project, each with how to fix it."""
    found = [_library(), *_certificate(settings)]
    if settings.context is None:
        found.append(Check(
            "CloudLab project", bool(settings.project), settings.project or "not set",
            "" if settings.project else
            f"set project= in {settings.config} or OMNIBED_CLOUDLAB_PROJECT",
        ))
    return found
