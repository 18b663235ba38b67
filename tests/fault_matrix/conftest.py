"""Prints the fault matrix at the end of a run: per testbed and step, cells passed / driven.

A cell that cannot exist counts as "n/a", one the matrix does not drive yet as "todo";
neither counts as passed.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

_results: dict[tuple[str, str, str], str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cell = dict(report.user_properties).get("cell")
    if cell is None:
        return
    if report.when == "call" or report.outcome != "passed":
        if report.skipped:
            applicable = "not_applicable" not in dict(report.user_properties)
            _results[cell] = "todo" if applicable else "n/a"
        elif _results.get(cell) != "failed":
            _results[cell] = report.outcome


def pytest_terminal_summary(terminalreporter) -> None:
    if not _results:
        return
    from tests.fault_matrix.test_fault_matrix import FAULTS, STEPS, TESTBEDS

    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (testbed, step, _), outcome in _results.items():
        counts[testbed, step][outcome] += 1
    write = terminalreporter.write_line
    terminalreporter.section("fault matrix: cells passed / driven (n/a: cannot exist)")
    write(f"faults per cell: {', '.join(FAULTS)}")
    width = 18
    write("testbed".ljust(11) + "".join(step.ljust(width) for step in STEPS) + "total")
    totals: dict[str, int] = defaultdict(int)
    for testbed in TESTBEDS:
        row: dict[str, int] = defaultdict(int)
        cells = []
        for step in STEPS:
            count = counts.get((testbed, step), {})
            driven = count.get("passed", 0) + count.get("failed", 0)
            text = f"{count.get('passed', 0)}/{driven}" if driven else "-"
            extra = [f"{count[k]} {k}" for k in ("n/a", "todo") if count.get(k)]
            cells.append((text + (f" ({', '.join(extra)})" if extra else "")).ljust(width))
            for key, value in count.items():
                row[key] += value
                totals[key] += value
        driven = row["passed"] + row["failed"]
        write(testbed.ljust(11) + "".join(cells) + f"{row['passed']}/{driven}")
    driven = totals["passed"] + totals["failed"]
    write(f"all: {totals['passed']}/{driven} cells passed, {totals['n/a']} not applicable,"
          f" {totals['todo']} not driven yet")
