"""Generation (`--only generate`): the generator actor (`actors/generator.py`, the preset's
sampling settings and entropy: exact from the engine, or a top-k estimate) against a bare
`vllm.LLM.generate` (no logprobs, no detokenisation) with the same engine arguments on the same
batches of the preset's prompts: tokens/s of each, their ratio `engine_ratio`, and where the
actor's time goes besides the engine call (its post-processing, the Ray round trip)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from egsw_rl.bench.report import format_table, median
from egsw_rl.bench.runner import BENCH_OVERRIDES, compose, workload

if TYPE_CHECKING:
    from egsw_rl.bench.runner import Bench

# (warm-up, timed) generate calls of each of the actor and the bare engine: [full run, --quick]
# (tiny_cpu: a call is ~0.1 s and moves by tens of percent with other jobs on the box; 40 rounds)
GENERATE_ROUNDS = {"tiny_cpu": [(2, 40), (2, 20)], "smollm2_cpu": [(1, 8), (1, 2)]}


def generate_summary(actor: Sequence[dict], bare: Sequence[dict]) -> dict:
    """The generator actor against a bare engine on the same batches: per-round rows
    {"tokens", "seconds"} of each; medians of tokens/s and their ratio (`engine_ratio`, 1.0 when
    the actor adds nothing to the engine's own time), and the median of the per-round ratios
    (`engine_ratio_paired`)."""
    if not actor or not bare:
        raise ValueError("generate_summary needs at least one round of each")
    a = median(r["tokens"] / r["seconds"] for r in actor if r["seconds"] > 0)
    b = median(r["tokens"] / r["seconds"] for r in bare if r["seconds"] > 0)
    # the same round's two calls run back to back, under about the same load: their ratio's median
    # moves less with other jobs on the machine than the ratio of the two medians
    paired = [
        (x["tokens"] / x["seconds"]) / (y["tokens"] / y["seconds"])
        for x, y in zip(actor, bare)
        if x["seconds"] > 0 and y["seconds"] > 0 and y["tokens"] > 0
    ]
    return {
        "actor_tokens_per_s": a,
        "bare_tokens_per_s": b,
        "engine_ratio": a / b if b > 0 else float("nan"),
        "engine_ratio_paired": median(paired) if paired else float("nan"),
        "rounds": len(actor),
        "actor_tokens": median(r["tokens"] for r in actor),
        "bare_tokens": median(r["tokens"] for r in bare),
    }


def _median_ms(xs: Iterable[float | None]) -> float | None:
    xs = [1e3 * x for x in xs if x is not None]
    return median(xs) if xs else None


class BareEngine:
    """`vllm.LLM.generate` with nothing around it (no top-k logprobs, no detokenisation): the
    engine's own limit that the generator actor is compared with. A Ray actor in the bench."""

    def __init__(self, engine_args: dict, env: dict):
        os.environ.update({k: str(v) for k, v in env.items()})
        from vllm import LLM

        self.llm = LLM(**engine_args)

    def generate(
        self, prompt_ids: list, n: int, temperature: float, top_p: float, top_k: int, max_tokens: int
    ) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = SamplingParams(
            n=int(n),
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k) if top_k not in (None, 0) else -1,
            max_tokens=int(max_tokens),
            detokenize=False,
        )
        t0 = time.perf_counter()
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], sp, use_tqdm=False
        )
        secs = time.perf_counter() - t0
        return {"tokens": sum(len(c.token_ids) for o in outs for c in o.outputs), "engine_s": secs}

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - already gone
            pass


# Environment of the generator actor that decides how its engine runs; the bare engine copies it.
ENGINE_ENV_KEYS = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_NO_USAGE_STATS",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
)


def generate_throughput(
    preset: str,
    *,
    rounds: int,
    warmup: int,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> dict:
    """The preset's generator actor (a real `GeneratorGroup` of one engine) and a bare engine
    (`BareEngine`, same engine arguments, environment and CPU slots) alive side by side, called in
    turn on the same batches of the preset's training prompts with the same sampling settings
    (n, temperature, top_p, top_k, max_tokens); `warmup` rounds first, then `rounds` timed ones,
    which of the two goes first alternating. Both are timed from the driver around the Ray call,
    so the actor's figure includes everything a trainer step waits for (tokenising, logprobs,
    entropy, completion text, returning the completions). Needs Ray up."""
    import dataclasses as dc

    import ray
    from omegaconf import OmegaConf

    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.config import ModelConfig, RolloutConfig

    cfg = compose(preset, [*BENCH_OVERRIDES, *overrides])
    wl = workload(cfg, warmup + rounds)
    B = wl["batch_size"]
    batches = [wl["prompts"][i * B : (i + 1) * B] for i in range(warmup + rounds)]
    mcfg = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
    rcfg = RolloutConfig(**OmegaConf.to_container(cfg.rollout, resolve=True))
    rcfg = dc.replace(rcfg, num_generators=1)
    device = "cuda" if str(cfg.trainer.device) == "cuda" else "cpu"
    echo(
        f"[bench] generate {preset}: {rounds} rounds of {B} prompts x G={rcfg.n}, "
        f"<= {rcfg.max_tokens} new tokens, entropy {_entropy_label(rcfg)}"
    )
    gens = GeneratorGroup(mcfg, rcfg, device)
    bare = None
    try:
        actor = gens.actors[0]
        engine_args = ray.get(actor.__ray_call__.remote(lambda self: self.engine_args()))
        env = ray.get(
            actor.__ray_call__.remote(
                lambda self, keys: {k: os.environ[k] for k in keys if k in os.environ}, ENGINE_ENV_KEYS
            )
        )
        for key in ("worker_extension_cls", "logprobs_mode", "max_logprobs"):
            engine_args.pop(key, None)
        opts = {
            "num_cpus": float(rcfg.cpus_per_generator),
            "num_gpus": float(rcfg.tensor_parallel_size if device == "cuda" else 0),
        }
        bare = ray.remote(BareEngine).options(**opts).remote(engine_args, env)
        ray.get(bare.__ray_call__.remote(lambda self: None))
        sampling = dict(
            n=rcfg.n,
            temperature=rcfg.temperature,
            top_p=rcfg.top_p,
            top_k=rcfg.top_k,
            max_tokens=rcfg.max_tokens,
        )
        actor_rows, bare_rows = [], []
        load0 = os.getloadavg()[0]
        for r, batch in enumerate(batches):
            # warm-up rounds only start the engines' lazy work: a few tokens are enough
            new_tokens = rcfg.max_tokens if r >= warmup else min(8, rcfg.max_tokens)

            def run_actor():
                t0 = time.perf_counter()
                comps = gens.generate(batch, max_tokens=new_tokens)  # noqa: B023 - called within its iteration
                secs = time.perf_counter() - t0
                st = gens.stats()[0]
                return {
                    "tokens": sum(len(c.token_ids) for c in comps),
                    "seconds": secs,
                    "engine_s": st.get("seconds"),
                    "post_s": st.get("post_s"),
                    "call_s": st.get("call_s"),
                }

            def run_bare(prompt_ids):
                t0 = time.perf_counter()
                res = ray.get(bare.generate.remote(prompt_ids, **{**sampling, "max_tokens": new_tokens}))  # noqa: B023 - called within its iteration
                return {**res, "seconds": time.perf_counter() - t0}

            # the bare engine gets exactly the token ids the actor will encode (untimed)
            ids = ray.get(
                actor.__ray_call__.remote(lambda self, p, m: self._encode(p, m), batch, rcfg.max_tokens)
            )
            if r % 2 == 0:
                a, b = run_actor(), run_bare(ids)
            else:
                b, a = run_bare(ids), run_actor()
            if r >= warmup:
                actor_rows.append(a)
                bare_rows.append(b)
        out = generate_summary(actor_rows, bare_rows)
        exact = rcfg.entropy_estimator == "exact"
        kind = ray.get(actor.__ray_call__.remote(lambda self: self._entropy_kind))
        out.update(
            {
                "preset": preset,
                "device": device,
                "prompts_per_call": B,
                "G": int(rcfg.n),
                "max_tokens": int(rcfg.max_tokens),
                "entropy_estimator": rcfg.entropy_estimator,
                # what vLLM is asked for a token: none with the V1 hook's record, the sampled
                # token's logprob and the entropy column on the V2 runner, else k candidates
                "logprobs": int(rcfg.logprobs) if not exact else None if kind == "v1" else 1,
                "entropy_path": "worker record" if exact and kind == "v1" else "logprobs channel",
                "engine_in_process": env.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0",
                "actor_engine_tokens_per_s": median(
                    x["tokens"] / x["engine_s"] for x in actor_rows if x.get("engine_s")
                ),
                "bare_engine_tokens_per_s": median(x["tokens"] / x["engine_s"] for x in bare_rows),
                # where the actor's time goes besides the engine: its own work after the engine
                # (entropy, text, records) and the Ray round trip (call, arguments, return)
                "engine_call_ratio": median(
                    (x["tokens"] / x["engine_s"]) / (y["tokens"] / y["engine_s"])
                    for x, y in zip(actor_rows, bare_rows)
                    if x.get("engine_s") and y.get("engine_s") and y["tokens"]
                ),
                "actor_post_ms": _median_ms(x.get("post_s") for x in actor_rows),
                "actor_ray_ms": _median_ms(x["seconds"] - x["call_s"] for x in actor_rows if x.get("call_s")),
                "bare_ray_ms": _median_ms(x["seconds"] - x["engine_s"] for x in bare_rows),
                "actor_rows": actor_rows,
                "bare_rows": bare_rows,
                "load_avg": [load0, os.getloadavg()[0]],
            }
        )
        return out
    finally:
        if bare is not None:
            try:
                ray.get(bare.close.remote(), timeout=60)
            except Exception:  # noqa: BLE001
                pass
            ray.kill(bare)
        gens.shutdown()


def _entropy_label(s) -> str:
    """`exact`, or the top-k estimator with its k (a RolloutConfig or a summary dict)."""
    get = s.get if isinstance(s, dict) else lambda k, d=None: getattr(s, k, d)
    est = get("entropy_estimator", "lower_bound")
    return "exact" if est == "exact" else f"{est}, k={get('logprobs')}"


def generate_bench(bench: Bench) -> dict:
    """`generate_throughput` on each preset (rounds: --steps, warm-up: --warmup, else
    `GENERATE_ROUNDS`); one preset failing keeps the others' figures."""
    bench.ray()
    out = {}
    for preset in bench.presets:
        warmup, rounds = GENERATE_ROUNDS.get(preset, GENERATE_ROUNDS["tiny_cpu"])[bench.quick]
        warmup, rounds = (
            bench.warmup if bench.warmup is not None else warmup,
            bench.steps if bench.steps is not None else rounds,
        )
        try:
            out[preset] = generate_throughput(
                preset, rounds=rounds, warmup=warmup, overrides=bench.extra, echo=bench.echo
            )
        except Exception as e:  # noqa: BLE001 - one preset failing must not lose the other's figures
            bench.echo(f"[bench] generate {preset} failed: {type(e).__name__}: {e}")
            out[preset] = {"error": f"{type(e).__name__}: {e}"}
    ok = {p: s for p, s in out.items() if "error" not in s}
    if not ok:
        raise RuntimeError("; ".join(f"{p}: {s['error']}" for p, s in out.items()))
    table = format_table(
        "Generation: the generator actor vs a bare vllm.LLM.generate (same prompts, same sampling)",
        [
            "preset",
            "engine",
            "prompts x G",
            "max new",
            "entropy",
            "actor tok/s",
            "bare tok/s",
            "engine_ratio",
            "paired",
            "engine call / bare",
            "actor post ms",
            "actor Ray ms",
            "bare Ray ms",
            "load avg",
        ],
        [
            [
                p,
                "in process" if s["engine_in_process"] else "own process",
                f"{s['prompts_per_call']} x {s['G']}",
                s["max_tokens"],
                _entropy_label(s),
                s["actor_tokens_per_s"],
                s["bare_tokens_per_s"],
                s["engine_ratio"],
                s["engine_ratio_paired"],
                s["engine_call_ratio"],
                s["actor_post_ms"],
                s["actor_ray_ms"],
                s["bare_ray_ms"],
                "{:.1f}-{:.1f}".format(*tuple(s["load_avg"])),
            ]
            for p, s in ok.items()
        ],
    )
    return {"table": table, "presets": out}
