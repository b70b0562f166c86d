"""The multirun summary table, from run directories as Hydra lays them out."""

import json

from egsw_rl.launch import write_sweep_summary


def test_summary_lists_every_run_with_final_and_best(tmp_path):
    for i, (alpha, rewards) in enumerate([("0.1", [0.1, 0.5, 0.3]), ("0.3", [0.2, 0.4])]):
        run = tmp_path / f"{i}_algo.alpha={alpha}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- algo.alpha={alpha}\n")
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s + 1, "reward/mean": r}) + "\n" for s, r in enumerate(rewards))
        )
    (tmp_path / "multirun.yaml").write_text("not a run\n")
    md = write_sweep_summary(tmp_path).read_text()
    lines = [x for x in md.splitlines() if x.startswith(("| 0_", "| 1_"))]
    assert len(lines) == 2
    assert "algo.alpha=0.1" in lines[0] and "| 0.3 | 0.5 |" in lines[0]  # final 0.3, best 0.5
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(csv) == 3 and csv[0].startswith("run,overrides,steps")
