"""The CloudLab provider (geni-lib); registered through the same hook as third parties."""

from __future__ import annotations

import warnings

from omnibed import hookimpl
from omnibed.providers.cloudlab.provider import CloudLabProvider

__all__ = ["CloudLabProvider", "omnibed_register_providers"]

# geni-lib imports pkg_resources (hence the setuptools<81 pin); users cannot act on that.
warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning, r"geni\.")


@hookimpl
def omnibed_register_providers() -> list[type[CloudLabProvider]]:
    return [CloudLabProvider]
