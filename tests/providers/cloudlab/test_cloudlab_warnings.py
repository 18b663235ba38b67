"""geni-lib's pkg_resources deprecation never reaches a CloudLab user, and importing the
provider leaves the process's warning filters as they were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, warnings
from pathlib import Path

before = list(warnings.filters)
from omnibed.providers.cloudlab import CloudLabProvider
if warnings.filters != before:
    sys.exit("importing the CloudLab provider changed the warning filters")
CloudLabProvider(Path(sys.argv[1])).client
import geni.minigcf.amapi2  # what geni-lib imports inside its calls
import urllib3
warnings.warn("Unverified HTTPS request", urllib3.exceptions.InsecureRequestWarning)
"""


def test_geni_lib_deprecation_is_not_shown_and_filters_stay(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-W", "default", "-c", SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pkg_resources" not in done.stderr
    assert "Unverified HTTPS request" not in done.stderr, "geni-lib's own filter was lost"
