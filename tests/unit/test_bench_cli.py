"""The command line of `python -m egsw_rl.bench`: --only is checked before anything runs, --paper
prints and writes the on-paper estimate alone."""

import json

import pytest

from egsw_rl.bench.cli import main


def test_cli_rejects_unknown_suite(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "steps,bogus"])
    assert "bogus" in capsys.readouterr().err


def test_cli_paper_only_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--paper", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bytes per sync" in printed
    # both layouts, and no machine header: nothing was measured
    assert "split (4 learner + 4 vLLM GPUs) vs colocated (8 GPUs" in printed and "speed-up" in printed
    assert "machine:" not in printed
    doc = json.loads(out.read_text())
    assert doc["paper"]["params"] > 7e9 and doc["paper_colocated"]["step_s"] < doc["paper"]["step_s"]
