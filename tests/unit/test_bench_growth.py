"""bench/growth_report.py: the growth curves' arithmetic, table, verdicts and README block (pure)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import growth_report as report


def test_sizes_parse_with_suffixes():
    assert report.parse_sizes("10k,100k,1M", "--memory-sizes", 100, 5_000_000) == [10_000, 100_000, 1_000_000]
    assert report.parse_sizes(" 10 , 50,200", "--node-counts", 1, 400) == [10, 50, 200]
    assert [report.short(n) for n in (10_000, 1_000_000, 50, 1500)] == ["10k", "1M", "50", "1500"]


@pytest.mark.parametrize("text, message", [
    ("", "expected a comma list of sizes"),
    (None, "expected a comma list of sizes"),
    ("10k,,1M", "'' is not a size"),
    ("-5", "'-5' is not a size"),
    ("1e6", "'1e6' is not a size"),
    ("10k;FLUSHALL", "is not a size"),
    ("\udcff\x00", "is not a size"),
    ("9" * 40, "is not a size"),
    ("99", "99 is out of range (expected 100 to 5000000)"),
    ("6M", "6000000 is out of range"),
    ("1k,1k", "must be increasing and distinct"),
    ("100k,10k", "must be increasing and distinct"),
])
def test_bad_sizes_are_one_line_errors(text, message):
    with pytest.raises(ValueError) as err:
        report.parse_sizes(text, "--memory-sizes", 100, 5_000_000)
    assert message in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("--memory-sizes: ")


def test_within_log_tells_log_from_linear_end_to_end():
    log_cost = [(n, 0.1 * math.log(n)) for n in (10_000, 100_000, 1_000_000)]
    assert report.within_log(log_cost)
    noisy = [(10_000, 1.0), (100_000, 1.9), (1_000_000, 1.4)]  # a noisy middle point is not judged alone
    assert report.within_log(noisy)
    assert report.within_log([(10_000, 1.0), (100_000, 3.0), (1_000_000, 10.0)]) is False  # ~sqrt(n)
    assert report.within_log([(10_000, 1.0), (1_000_000, 100.0)]) is False  # linear
    assert report.within_log([(10_000, 1.0)]) is None and report.within_log([(1, 1.0), (10, 2.0)]) is None


def test_flat_and_exponent():
    assert report.flat([34.1, 34.0, 34.2]) and report.flat([34.0, 40.0]) is False and report.flat([1.0]) is None
    assert report.exponent(10, 1.0, 100, 10.0) == pytest.approx(1.0)
    assert report.exponent(10, 1.0, 100, 100.0) == pytest.approx(2.0)
    assert report.exponent(10, 0.0, 100, 1.0) is None and report.exponent(10, 1.0, 10, 2.0) is None


def test_summary_ignores_errors_and_non_numbers():
    runs = [{"x": 3.0}, {"x": 1.0}, {"x": 2.0}, {"x": 9.0, "error": "capped"}, {"x": True}, {"x": float("nan")},
            {"x": "7"}, {}]
    assert report.summary(runs, "x") == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert report.summary([{"error": "boom"}], "x") is None


def curves():
    return {
        "memory": {"qdeploy": {"10000": {"runs": [{"per_task": 420.0}]}, "100000": {"runs": [{"per_task": 430.0}]}},
                   "celery": {"10000": {"runs": [{"per_task": 1050.0}]}, "100000": {"runs": [{"per_task": 1029.0}]}}},
        "eta": {"qdeploy": {str(n): {"runs": [{"master_rss_mib": 34.0 + k / 10, "redis_us_per_task": 30.0 + k,
                                               "zset_us_per_task": 2.0 + k / 5}]}
                            for k, n in enumerate((10_000, 100_000, 1_000_000))},
                "celery": {"10000": {"runs": [{"master_rss_mib": 140.0, "held": 10_000}]},
                           "100000": {"runs": [{"master_rss_mib": 930.0, "held": 100_000}]}}},
        "nodes": {"qdeploy": {"10": {"runs": [{"cpu_pct": 1.0}, {"cpu_pct": 1.2}, {"cpu_pct": 0.8}]},
                              "200": {"runs": [{"cpu_pct": 20.0}]}}},
    }


def test_table_has_a_row_per_measure_and_system_with_ratios_to_qdeploy():
    text = report.table(curves(), {"memory": [10_000, 100_000], "eta": [10_000, 100_000, 1_000_000], "nodes": [10, 200]})
    lines = text.splitlines()
    assert lines[0] == "| measure (sizes) | system | size 1 | size 2 | size 3 | last / first |"
    assert "| Redis memory per waiting task (bytes) (10k / 100k queued tasks) | qdeploy | 420 | 430 |  | 1.02× |" in lines
    assert "|  | celery | 1,050 (0.40×) | 1,029 (0.42×) |  | 0.98× |" in lines
    assert "| nodes: Redis CPU share (%) (10 / 200 nodes) | qdeploy | 1.00 ±20% | 20.0 |  | 20.00× |" in lines
    assert not any("render" in line for line in lines), "a curve not measured has no row"


def test_verdicts_judge_the_musts():
    got = report.verdicts(curves())
    assert got[0] == "ETA, qdeploy worker memory flat (≤ +10 %): 34.0 → 34.2 MiB from 10k to 1M — met"
    assert got[1] == ("ETA, Celery worker memory: 140 → 930 MiB from 10k to 100k scheduled "
                      "(~9,204 bytes per ETA task held in the worker)")
    assert got[2].startswith("ETA, cost per promoted task (reserve script) within O(log n) (10k → 1M: grew 1.07×")
    assert got[2].endswith("— met")
    assert got[4].startswith("nodes, Redis CPU share grows as 10→200: n^1.00")
    bad = curves()
    bad["eta"]["qdeploy"]["1000000"]["runs"][0]["master_rss_mib"] = 80.0
    bad["eta"]["qdeploy"]["1000000"]["runs"][0]["zset_us_per_task"] = 200.0
    got = report.verdicts(bad)
    assert got[0].endswith("**missed**") and got[3].endswith("**missed**")


def test_readme_block_replaces_the_old_one_or_is_appended(tmp_path):
    doc = {"date": "2026-12-02", "argv": ["--growth"], "machine": {"nproc": 2, "cpu": "X", "python": "3.11", "redis": "7",
                                                                     "versions": {"qdeploy": "0.1", "celery": None}},
           "load": {"min": 0.5, "max": 1.5, "median": 1.0, "n": 3}, "reference": "Celery drains 900/s.",
           "table": "| t |", "verdicts": ["v1"], "notes": ["n1"], "plot": None}
    block = report.readme_block(doc)
    assert "Machine: 2 CPUs, X, Python 3.11, redis-server 7; qdeploy 0.1." in block and "celery" not in block
    assert "Celery drains 900/s." in block and "(no plot: matplotlib" in block and "- v1" in block and "- n1" in block
    path = tmp_path / "README.md"
    path.write_text("# B\n\ntext\n")
    report.update_readme(path, block)
    assert path.read_text() == "# B\n\ntext\n\n" + block + "\n"
    report.update_readme(path, block.replace("- v1", "- v2"))
    assert path.read_text().count("growth:start") == 1 and "- v2" in path.read_text() and "- v1" not in path.read_text()
