"""The report of `python -m egsw_rl.bench`: medians, table cells, the JSON document, and the
machine's facts (a header line and the document, not table titles)."""

import json
import math

import pytest

from egsw_rl.bench import report
from egsw_rl.bench.step import step_breakdown


def test_median_ignores_nan_and_none():
    assert report.median([3, 1, 2]) == 2
    assert report.median([1.0, float("nan"), None, 3.0]) == 2.0
    assert math.isnan(report.median([]))


def test_measured_drops_warmup_in_step_order_but_never_everything():
    rows = [{"step": s} for s in (3, 1, 2)]
    assert [r["step"] for r in report.measured(rows, 1)] == [2, 3]
    assert [r["step"] for r in report.measured(rows, 5)] == [1, 2, 3]


def test_fmt_and_format_table():
    assert report.fmt(None) == "" and report.fmt(float("nan")) == ""
    assert report.fmt(0.123456) == "0.123"
    assert report.fmt(12345.6) == "12,346"
    assert report.fmt(3) == "3" and report.fmt(True) == "yes" and report.fmt("x") == "x"
    t = report.format_table("T", ["a", "b"], [[1, 0.5], ["x", None]])
    lines = t.strip().splitlines()
    assert lines[0] == "### T"
    assert lines[2] == "| a | b |" and lines[3] == "|---|---|"
    assert lines[4] == "| 1 | 0.5 |" and lines[5] == "| x |  |"


def test_human_bytes():
    assert report.human_bytes(1.84e6) == "1.84 MB"
    assert report.human_bytes(5.13e8) == "513 MB"
    assert report.human_bytes(1.5e10) == "15 GB"
    assert report.human_bytes(12) == "12 B"


def test_document_structure_is_json_and_refuses_unknown_suites(step_row):
    steps = step_breakdown([step_row(s) for s in range(1, 4)], 1)
    doc = report.document(
        {"steps": {"table": "t", "presets": {"tiny_cpu": steps}}},
        quick=True,
        argv=["--quick"],
        info={"cpus": 2, "load_avg": [1.0, 1.0, 1.0]},
    )
    assert doc["schema"] == report.SCHEMA and doc["quick"] is True
    assert doc["command"] == "python -m egsw_rl.bench --quick"
    assert doc["machine"]["cpus"] == 2
    back = json.loads(json.dumps(doc))
    assert back["results"]["steps"]["presets"]["tiny_cpu"]["steps"] == 2
    with pytest.raises(ValueError):
        report.document({"nope": {}}, quick=False, argv=[], info={})


def test_cpu_model_from_cpuinfo_and_the_header_line():
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n"
    assert report.cpu_model(text) == "AMD EPYC 7B13"
    info = {
        "cpus": 2,
        "cpu_model": "AMD EPYC 7B13",
        "mem_gib": 23.5,
        "load_avg": [1.0, 0.5, 0.25],
        "torch_version": "2.13",
    }
    line = report.machine_line(info)
    assert "\n" not in line and line.startswith("machine: 2 CPUs (AMD EPYC 7B13)")
    assert "24 GiB" in line and "load average 1.0 / 0.5 / 0.2" in line and "torch 2.13" in line
    assert report.machine_line({"cpus": 4}) == "machine: 4 CPUs"
    info = report.machine_info()
    assert info["cpus"] and "cpu_model" in info and len(info["load_avg"]) == 3
