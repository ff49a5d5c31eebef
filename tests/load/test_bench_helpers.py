"""The benchmarks' shared arithmetic and their report, on the committed result files."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bench import report
from bench.common import percentile, summary


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5, 1, 4, 2, 3], list(range(1, 101))])
def test_percentile_interpolates_between_closest_ranks(values: list[float]) -> None:
    # statistics' "inclusive" method is the same definition (numpy's default).
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else []
    for q in (1, 50, 95, 99):
        expected = cuts[q - 1] if cuts else values[0]
        assert percentile(values, q) == pytest.approx(expected)
    assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)


def test_summary_of_nothing_and_of_a_run() -> None:
    assert summary([]) == {"n": 0}
    assert summary([2.0, 1.0, 3.0]) == {"n": 3, "min": 1.0, "p50": 2.0, "p95": 2.9,
                                        "p99": 2.98, "max": 3.0, "mean": 2.0}


def test_report_summarises_every_result_of_ours(tmp_path: Path) -> None:
    ours = [p for p in report.RESULTS.glob("*.json")
            if p.stem.split("_")[0] in ("latency", "starter", "burst", "history")]
    if not ours:
        pytest.skip("no benchmark results in bench/results")
    for path in ours:
        (tmp_path / path.name).write_text(path.read_text())
    text = report.render(tmp_path)
    assert "(result file not understood)" not in text
    for path in ours:
        assert f"| {path.stem} |" in text
