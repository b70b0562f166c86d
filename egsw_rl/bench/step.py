"""Where a training step's time goes, on this machine (`--only steps`), and what overlap mode
gives (`--only overlap`): the real trainer's metrics rows, summarised per phase."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from egsw_rl.bench.report import format_table, measured, median

if TYPE_CHECKING:
    from egsw_rl.bench.runner import Bench

PHASES = ("generate", "reward", "logprobs", "update", "sync")


def step_overhead(row: dict) -> float:
    """Step wall time minus the sum of the phases (generate, reward, logprobs, update, sync).
    In overlap mode the generation of the step's batch ran during the previous step; only the
    wait for it (timing/generate_wait_s) is on this step's clock."""
    gen = (
        row.get("timing/generate_wait_s")
        if "timing/generate_wait_s" in row
        else row.get("timing/generate_s", 0.0)
    )
    phases = [gen] + [row.get(f"timing/{p}_s", 0.0) for p in PHASES[1:]]
    return float(row["timing/step_s"]) - sum(float(x or 0.0) for x in phases)


def step_breakdown(rows: Sequence[dict], warmup: int) -> dict:
    """Medians over the measured steps of every phase, the overhead (absolute and as a fraction
    of the step), and throughputs: generated tokens per generate-second and per step-second,
    trained tokens per update-second and per step-second."""
    rows = measured(rows, warmup)
    if not rows:
        raise ValueError("no metrics rows to summarise")
    out: dict[str, Any] = {"steps": len(rows), "warmup": warmup}
    out["step_s"] = median(r["timing/step_s"] for r in rows)
    for p in PHASES:
        out[f"{p}_s"] = median(r.get(f"timing/{p}_s", 0.0) for r in rows)
    out["shape_s"] = median(r.get("timing/shape_s", 0.0) for r in rows)
    out["overhead_s"] = median(step_overhead(r) for r in rows)
    out["overhead_frac"] = median(step_overhead(r) / r["timing/step_s"] for r in rows)
    gen = [r.get("tokens/generated", 0) for r in rows]
    trained = [r.get("actor/train_tokens", 0) for r in rows]
    out["tokens_generated"] = median(gen)
    out["tokens_trained"] = median(trained)
    out["gen_tokens_per_s"] = median(
        g / r["timing/generate_s"] for g, r in zip(gen, rows) if r.get("timing/generate_s")
    )
    out["train_tokens_per_s"] = median(
        t / r["timing/update_s"] for t, r in zip(trained, rows) if r.get("timing/update_s")
    )
    out["gen_tokens_per_step_s"] = median(g / r["timing/step_s"] for g, r in zip(gen, rows))
    out["train_tokens_per_step_s"] = median(t / r["timing/step_s"] for t, r in zip(trained, rows))
    out["padding_frac"] = median(r.get("actor/padding_frac", float("nan")) for r in rows)
    out["response_len"] = median(r.get("response_length/mean", float("nan")) for r in rows)
    out["policy_lag"] = median(r.get("policy_lag/mean", 0.0) for r in rows)
    out["steps_per_s"] = 1.0 / out["step_s"] if out["step_s"] > 0 else float("nan")
    return out


def overlap_summary(off: dict, on: dict) -> dict:
    """steps/s with and without trainer.overlap (step breakdowns), the speed-up and the lag."""
    # With generation on its own cores or GPUs, an overlapped step lasts as long as the longer of
    # generation and the rest of the step (plus the old-logprob pass that off-policy data needs),
    # then the sync; estimated from the non-overlapped run's phases.
    train_side = (
        off["step_s"] - off["generate_s"] - off["sync_s"] + max(0.0, on["logprobs_s"] - off["logprobs_s"])
    )
    ideal = off["step_s"] / (max(off["generate_s"], train_side) + off["sync_s"])
    return {
        "steps_per_s_off": off["steps_per_s"],
        "steps_per_s_on": on["steps_per_s"],
        "ideal_speedup_own_devices": ideal,
        "speedup": on["steps_per_s"] / off["steps_per_s"] if off["steps_per_s"] else float("nan"),
        "policy_lag_off": off["policy_lag"],
        "policy_lag_on": on["policy_lag"],
        "step_s_off": off["step_s"],
        "step_s_on": on["step_s"],
        "logprobs_s_on": on["logprobs_s"],
        "generate_s_on": on["generate_s"],
        "update_s_off": off["update_s"],
        "update_s_on": on["update_s"],
    }


def steps_bench(bench: Bench) -> dict:
    """The real trainer on each preset: the median step, phase by phase (`step_breakdown`)."""
    out = {}
    for preset in bench.presets:
        r = bench.train(preset)
        out[preset] = {
            **r["summary"],
            "load_avg": [r["load_avg_start"], r["load_avg_end"]],
            "run_dir": r["run_dir"],
            "rows": r["rows"],
        }
    headers = [
        "preset",
        "step s",
        "generate",
        "reward",
        "logprobs",
        "update",
        "sync",
        "overhead",
        "overhead %",
        "gen tok/s",
        "train tok/s",
        "padding",
        "load avg",
    ]
    rows = [
        [
            p,
            s["step_s"],
            s["generate_s"],
            s["reward_s"],
            s["logprobs_s"],
            s["update_s"],
            s["sync_s"],
            s["overhead_s"],
            100 * s["overhead_frac"],
            s["gen_tokens_per_s"],
            s["train_tokens_per_s"],
            s["padding_frac"],
            "{:.1f}-{:.1f}".format(*tuple(s["load_avg"])),
        ]
        for p, s in out.items()
    ]
    return {
        "table": format_table("Step breakdown (median seconds per step after warm-up)", headers, rows),
        "presets": out,
    }


def overlap_bench(bench: Bench) -> dict:
    """The real trainer on each preset with trainer.overlap off and on (`overlap_summary`)."""
    out = {}
    for preset in bench.presets:
        off = bench.train(preset)
        on = bench.train(preset, ["trainer.overlap=true"])
        out[preset] = {
            **overlap_summary(off["summary"], on["summary"]),
            "load_avg_off": [off["load_avg_start"], off["load_avg_end"]],
            "load_avg_on": [on["load_avg_start"], on["load_avg_end"]],
            "rows_on": on["rows"],
        }
    table = format_table(
        "Overlap (generate batch k+1 while training on batch k)",
        [
            "preset",
            "steps/s off",
            "steps/s on",
            "speed-up",
            "speed-up, own devices (est.)",
            "policy lag off",
            "policy lag on",
            "old-logprob pass on (s)",
            "update off / on (s)",
            "load avg off / on",
        ],
        [
            [
                p,
                s["steps_per_s_off"],
                s["steps_per_s_on"],
                s["speedup"],
                s["ideal_speedup_own_devices"],
                s["policy_lag_off"],
                s["policy_lag_on"],
                s["logprobs_s_on"],
                f"{s['update_s_off']:.3g} / {s['update_s_on']:.3g}",
                "{:.1f} / {:.1f}".format(s["load_avg_off"][1], s["load_avg_on"][1]),
            ]
            for p, s in out.items()
        ],
    )
    return {"table": table, "presets": out}
