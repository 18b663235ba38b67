"""The README's verb table is what `omnibed providers --markdown` derives from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_verb_table_matches_the_code() -> None:
    generated = subprocess.run(
        [str(Path(sys.executable).with_name("omnibed")), "providers", "--markdown"],
        env={**os.environ, "OMNIBED_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    written = re.search(r"<!-- verbs:start -->\n(.*?)\n<!-- verbs:end -->", README.read_text(),
                        re.S)
    assert written is not None, "README lost its verbs table markers"
    assert written.group(1).strip() == generated, (
        "README's verb table is stale: paste `omnibed providers --markdown` into it"
    )
