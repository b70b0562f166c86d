"""Several runs side by side (egsw_rl.compare): final eval results grouped by label (mean ± std,
`python -m egsw_rl.eval --compare`) and training curves of synthetic runs (`python -m egsw_rl.compare`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from egsw_rl import compare as cmp


def _write_results(d: Path, records):
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps({"egsw_rl_eval": 1, "results": records}))
    return d


def test_compare_results_groups_by_label(tmp_path, eval_record):
    items = []
    for algo, accs in {"grpo": [0.50, 0.52, 0.54], "egsw": [0.60, 0.61, 0.65]}.items():
        for seed, a in enumerate(accs):
            d = _write_results(
                tmp_path / f"{algo}_{seed}",
                [
                    eval_record(
                        f"{algo}_{seed}",
                        algo,
                        {"math500": a, "aime24": a / 10},
                        n=4,
                        pass_k={"pass@4": a + 0.1},
                    )
                ],
            )
            items.append(str(d))
    md, summary = cmp.compare_results(items)
    g = summary["groups"]
    assert set(g) == {"grpo", "egsw"}
    assert g["grpo"]["benchmarks"]["math500"]["mean"] == pytest.approx(0.52)
    assert g["grpo"]["benchmarks"]["math500"]["std"] == pytest.approx(0.02)
    assert g["egsw"]["benchmarks"]["aime24"]["count"] == 3
    lines = md.splitlines()
    assert "| Method | MATH-500 | AIME24 | Avg. | Runs |" in lines
    assert "| grpo | 52.0 ± 2.0 | 5.2 ± 0.2 | 28.6 | 3 |" in lines
    # pass@k, and labels given on the command line
    _, s2 = cmp.compare_results(items, metric="pass@4", labels=["a", "a", "a", "b", "b", "b"])
    assert s2["groups"]["a"]["benchmarks"]["math500"]["mean"] == pytest.approx(0.62)
    with pytest.raises(cmp.CompareError):
        cmp.compare_results(items, labels=["a"])
    with pytest.raises(cmp.CompareError):
        cmp.compare_results([str(tmp_path / "nothing")])


def test_compare_reads_periodic_eval_from_run_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo:\n  name: clipb\n")
    rows = [
        {"step": 1, "reward/mean": 0.1},
        {"step": 2, "eval/math500/accuracy": 0.3, "eval/aime24/accuracy": 0.0, "eval/mean/accuracy": 0.15},
        {"step": 4, "eval/math500/accuracy": 0.4, "eval/aime24/accuracy": 0.1, "eval/math500/pass@4": 0.6},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [rec] = cmp.load_records(str(run))
    assert rec["label"] == "clipb" and rec["step"] == 4
    assert rec["benchmarks"]["math500"] == {"accuracy": 0.4, "pass_at_k": {"pass@4": 0.6}}
    assert "mean" not in rec["benchmarks"]
    only = tmp_path / "only_eval_jsonl"
    only.mkdir()
    (only / "eval.jsonl").write_text(json.dumps({"step": 0, "eval/gsm8k/accuracy": 0.25}) + "\n")
    [rec] = cmp.load_records(str(only))
    assert rec["benchmarks"]["gsm8k"]["accuracy"] == 0.25 and rec["step"] == 0


def _fake_run(root: Path, name: str, algo: str, rewards, *, extra=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"algo:\n  name: {algo}\ntrainer:\n  seed: 0\n")
    with (d / "metrics.jsonl").open("w") as f:
        for step, r in enumerate(rewards, 1):
            row = {
                "step": step,
                "reward/mean": r,
                "reward/accuracy": r / 2,
                "response_length/mean": 100.0 + step,
                "entropy/mean": 1.0 / step,
            }
            row.update((extra or {}).get(step, {}))
            f.write(json.dumps(row) + "\n")
    return d


def test_compare_runs_aggregates_by_algo(tmp_path):
    _fake_run(tmp_path, "grpo_s0", "grpo", [0.1, 0.3, 0.2])
    _fake_run(tmp_path, "grpo_s1", "grpo", [0.2, 0.5, 0.4])
    e = _fake_run(tmp_path, "egsw_s0", "egsw", [0.2, 0.4, 0.6], extra={3: {"eval/math500/accuracy": 0.3}})
    # the trainer's eval.jsonl: a before-training row at step 0 and a copy of the step-3 one
    (e / "eval.jsonl").write_text(
        json.dumps({"step": 0, "eval/math500/accuracy": 0.1})
        + "\n"
        + json.dumps({"step": 3, "eval/math500/accuracy": 0.3})
        + "\n"
    )
    out = tmp_path / "cmp"
    md, summary, pngs = cmp.compare_runs([str(tmp_path)], out)
    assert summary["runs"]["egsw_s0"]["eval/math500/accuracy"]["points"] == 2
    assert summary["runs"]["egsw_s0"]["steps"] == 3
    runs = summary["runs"]
    assert set(runs) == {"grpo_s0", "grpo_s1", "egsw_s0"}
    assert runs["grpo_s0"]["reward/mean"]["final"] == pytest.approx(0.2)
    assert runs["grpo_s0"]["reward/mean"]["best"] == pytest.approx(0.3)
    assert runs["grpo_s0"]["reward/mean"]["best_step"] == 2
    assert "best" not in runs["grpo_s0"]["entropy/mean"]  # no direction for entropy
    g = summary["labels"]["grpo"]
    assert g["runs"] == ["grpo_s0", "grpo_s1"]
    assert g["reward/mean"]["final"]["mean"] == pytest.approx(0.3)
    assert g["reward/mean"]["final"]["std"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert g["reward/mean"]["best"]["mean"] == pytest.approx(0.4)
    assert summary["labels"]["egsw"]["eval/math500/accuracy"]["final"]["mean"] == pytest.approx(0.3)
    names = {p.name for p in pngs}
    assert {
        "reward_mean.png",
        "reward_accuracy.png",
        "response_length_mean.png",
        "entropy_mean.png",
        "eval_math500_accuracy.png",
    } == names
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert (out / "compare.md").read_text().strip() == md
    assert json.loads((out / "compare.json").read_text())["labels"]["egsw"]["runs"] == ["egsw_s0"]
    lines = md.splitlines()
    assert any(line.startswith("| grpo | 2 | 0.300 ± 0.141 | 0.400 ± 0.141 |") for line in lines), md
    assert any(line.startswith("| egsw_s0 | egsw | 3 | 0.600 | 0.600 |") for line in lines), md


def test_compare_runs_eval_before_after_per_label(tmp_path):
    """The methods table: held-out accuracy before (the step-0 eval) and final (the last eval,
    however wide the window), training accuracy over the last steps, mean ± std over seeds."""
    for seed, (before, after) in enumerate([(0.1, 0.3), (0.2, 0.5)]):
        d = _fake_run(
            tmp_path / "sweep",
            str(seed),
            "grpo",
            [0.2, 0.4, 0.6, 0.8],
            extra={4: {"eval/heldout/accuracy": after, "egsw/ess_frac": 0.9}},
        )
        (d / "eval.jsonl").write_text(json.dumps({"step": 0, "eval/heldout/accuracy": before}) + "\n")
    md, summary, _ = cmp.compare_runs(
        [str(tmp_path / "sweep")],
        None,
        final_window=2,
        metrics=["reward/accuracy", "eval/heldout/accuracy", "egsw/ess_frac"],
    )
    run = summary["runs"]["0"]
    assert run["reward/accuracy"]["final"] == pytest.approx(0.35)  # steps 3, 4: 0.3, 0.4
    assert run["eval/heldout/accuracy"]["first"] == pytest.approx(0.1)
    assert run["eval/heldout/accuracy"]["final"] == pytest.approx(0.3)  # not the mean with step 0
    lab = summary["labels"]["grpo"]
    assert lab["eval/heldout/accuracy"]["first"]["mean"] == pytest.approx(0.15)
    assert lab["eval/heldout/accuracy"]["final"]["std"] == pytest.approx(statistics.stdev([0.3, 0.5]))
    head = next(line for line in md.splitlines() if line.startswith("| Label"))
    assert "eval/heldout/accuracy before | eval/heldout/accuracy final" in head
    assert "reward/accuracy before" not in head
    assert any(
        line.startswith("| grpo | 2 | 0.350 ± 0.000 | 0.400 ± 0.000 | 0.150 ± 0.071 | 0.400 ± 0.141")
        for line in md.splitlines()
    ), md


def test_compare_runs_labels_window_and_resume_duplicates(tmp_path):
    a = _fake_run(tmp_path, "a", "grpo", [0.1, 0.2, 0.3, 0.4])
    b = _fake_run(tmp_path, "b", "grpo", [0.5, 0.5])
    with (b / "metrics.jsonl").open("a") as f:  # a resumed run re-logs step 2, then goes on
        f.write(json.dumps({"step": 2, "reward/mean": 0.7}) + "\n")
        f.write(json.dumps({"step": 3, "reward/mean": 0.9}) + "\n")
        f.write('{"step": 4, "rew')  # torn last line
    with (a / "metrics.jsonl").open("a") as f:  # a periodic-eval row apart from the step's training row
        f.write(json.dumps({"step": 4, "eval/math500/accuracy": 0.5}) + "\n")
    md, summary, pngs = cmp.compare_runs(
        [str(a), str(b)],
        None,
        labels=["x", "y"],
        final_window=2,
        metrics=["reward/mean", "eval/math500/accuracy"],
    )
    assert pngs == []
    assert summary["runs"]["a"]["reward/mean"]["final"] == pytest.approx(0.35)
    assert summary["runs"]["a"]["eval/math500/accuracy"]["final"] == pytest.approx(0.5)
    assert summary["runs"]["b"]["reward/mean"]["final"] == pytest.approx(0.8)  # steps 2 (0.7), 3 (0.9)
    assert summary["runs"]["b"]["steps"] == 3
    assert set(summary["labels"]) == {"x", "y"}
    assert "mean over the last 2 steps" in md
    with pytest.raises(cmp.CompareError):
        cmp.compare_runs([str(a)], None, labels=["x", "y"])
    with pytest.raises(cmp.CompareError):
        cmp.compare_runs([str(tmp_path / "missing")], None)


def test_compare_cli(tmp_path, capsys):
    _fake_run(tmp_path / "sweep", "0", "grpo", [0.1, 0.2])
    _fake_run(tmp_path / "sweep", "1", "egsw", [0.3, 0.4])
    assert cmp.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| grpo | 1 |" in out and "| egsw | 1 |" in out
    assert (tmp_path / "o" / "reward_mean.png").exists()
    assert cmp.main([str(tmp_path / "nowhere")]) == 2
