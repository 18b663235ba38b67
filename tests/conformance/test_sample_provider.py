"""The sample third-party provider passes the suite; broken variants fail it, naming the rule.

The sample's own test files (examples/sample-provider/tests) run in a pytester directory,
as its author runs them, against real sshds standing for the static hosts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.conftest import StaticHosts

pytest_plugins = ["pytester"]

SAMPLE_TESTS = Path(__file__).parents[2] / "examples" / "sample-provider" / "tests"


def copy_sample_tests(pytester: pytest.Pytester) -> None:
    for source in SAMPLE_TESTS.glob("*.py"):
        (pytester.path / source.name).write_text(source.read_text())


def use_hosts(monkeypatch: pytest.MonkeyPatch, hosts: StaticHosts) -> None:
    for name, value in hosts.environment().items():
        monkeypatch.setenv(name, value)


@pytest.mark.root
def test_sample_provider_passes_the_suite(
    pytester: pytest.Pytester, static_hosts: StaticHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_sample_tests(pytester)
    use_hosts(monkeypatch, static_hosts)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=17, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*statichosts declares no snapshot capability*"])


BROKEN = [
    ("ReleaseNotIdempotent", "test_release_is_idempotent_and_leaves_nothing",
     "contract rule 'release is idempotent and leaves nothing: find(name) is None afterwards' "
     "broken: ReservationNotFound: *"),
    ("ForgetsTheKeys", "test_release_is_idempotent_and_leaves_nothing",
     "contract rule 'release is idempotent and leaves nothing: find(name) is None afterwards' "
     "broken: the testbed still holds *alpha: the key of conf-* logs in as root* after "
     "release, although find(*) is None"),
    ("DuplicatingReserve", "test_reserving_twice_under_one_name_does_not_duplicate",
     "contract rule 'reserving twice under one name returns the existing reservation' "
     "broken: second reserve made * beside *"),
    ("LocalTimeAsUTC", "test_times_are_utc",
     "contract rule 'times are tz-aware UTC and an immediate reservation spans now' "
     "broken: reserve: start * is after now *: local time as UTC?*"),
    ("NaiveTimes", "test_times_are_utc",
     "contract rule 'times are tz-aware UTC and an immediate reservation spans now' "
     "broken: ValueError: * is not a tz-aware UTC datetime"),
]


@pytest.mark.root
@pytest.mark.parametrize(("variant", "test", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_suite_fails_a_broken_provider_naming_the_rule(
    pytester: pytest.Pytester,
    static_hosts: StaticHosts,
    monkeypatch: pytest.MonkeyPatch,
    variant: str,
    test: str,
    message: str,
) -> None:
    copy_sample_tests(pytester)
    use_hosts(monkeypatch, static_hosts)
    pytester.makeconftest(
        (SAMPLE_TESTS / "conftest.py").read_text()
        + f"""

from tests.conformance.broken_providers import {variant}


@pytest.fixture
def omnibed_provider(tmp_path: Path) -> {variant}:
    inventory = Path(os.environ["OMNIBED_STATICHOSTS_INVENTORY"])
    return {variant}(tmp_path / "state", inventory=inventory)
"""
    )
    result = pytester.runpytest("-k", test)
    assert result.parseoutcomes().get("failed") == 1  # NaiveTimes also errors at teardown
    result.stdout.fnmatch_lines([f"*{message}*"])


LIVE_FIXTURES = [
    ("None", "*1 passed*", "*checked with find() only; define an omnibed_live_resources fixture*"),
    ("lambda reservation: []", "*1 failed*",
     "*omnibed_live_resources lists nothing for 'conf-*' while it is READY*"),
]


@pytest.mark.root
@pytest.mark.parametrize(("live", "outcome", "message"), LIVE_FIXTURES, ids=["none", "blind"])
def test_release_rule_says_what_it_could_not_ask(
    pytester: pytest.Pytester,
    static_hosts: StaticHosts,
    monkeypatch: pytest.MonkeyPatch,
    live: str,
    outcome: str,
    message: str,
) -> None:
    """Without omnibed_live_resources the rule warns that it asked find() only; a fixture
    that sees nothing of a READY reservation fails the rule instead of passing it blind."""
    copy_sample_tests(pytester)
    use_hosts(monkeypatch, static_hosts)
    pytester.makeconftest(
        (SAMPLE_TESTS / "conftest.py").read_text()
        + f"""

@pytest.fixture
def omnibed_live_resources():
    return {live}
"""
    )
    result = pytester.runpytest("-k", "test_release_is_idempotent_and_leaves_nothing")
    result.stdout.fnmatch_lines([message, outcome])
