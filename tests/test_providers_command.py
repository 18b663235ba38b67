"""`omnibed providers` is readable on an 80-column terminal: nothing cut, nothing too wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

OMNIBED = str(Path(sys.executable).with_name("omnibed"))


def providers(*args: str) -> str:
    done = subprocess.run(
        [OMNIBED, "providers", *args],
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_every_testbed_fact_is_shown_whole_at_80_columns() -> None:
    listing = json.loads(providers("--json"))["providers"]
    text = providers()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "…" not in text, text
    words = set(text.replace(",", " ").split())
    for provider in listing:
        shown = {provider["name"], *provider["verbs"], *provider["capabilities"],
                 *provider["options"]}
        assert shown <= words, (provider["name"], shown - words)
