"""Benchmark evaluation: `python -m egsw_rl.eval`.

    python -m egsw_rl.eval --model outputs/2025-01-01/12-00-00 --benchmarks math500,aime24,aime25
    python -m egsw_rl.eval --model smollm2 --benchmarks gsm8k --limit 50 --max-tokens 512
    python -m egsw_rl.eval --model Qwen/Qwen2.5-Math-7B --n 16 --k 1,8,16 --temperature 0.6 \\
        --top-p 0.95 --benchmarks math500,aime24,aime25,gpqa_diamond=/data/gpqa_diamond.csv --out eval/
    python -m egsw_rl.eval --compare runs/grpo_s*/eval runs/egsw_s*/eval   # mean ± std per label

Models: an HF folder, a hub name, "tiny" / "tiny_arith" / "smollm2" (`egsw_rl.models`), a run
directory (its newest complete checkpoint's `hf/` export) or one checkpoint directory. Several
models may be given; they are evaluated one after the other (one vLLM engine at a time).

Benchmarks: math500, aime24, aime25, gsm8k (local copies via `egsw_rl.data.load_problems`, else
the hub), gpqa_diamond (gated, never shipped: `gpqa_diamond=PATH` to a .csv / .jsonl / .parquet
with the original columns, or the hub when logged in), or NAME=PATH for any other problem file.

Prompt (`--prompt`): a template name of `egsw_rl.prompts`, the renderer training uses. A trained
run is evaluated with its own `rollout.prompt_template` unless `--prompt` names another; any
other model with `qwen_math` (Qwen2.5-Math's: the instruction "Please reason step by step, and
put your final answer within \\boxed{}." as the system turn). A problem whose prompt does not fit
the context beside `--max-tokens` is not generated: it is scored 0 with status
`overlong_prompt` and counted in the results. Each problem gets n samples; grading is
`egsw_rl.rewards` (math-verify; GPQA by answer letter) in a process pool with a per-sample
timeout. Reported per benchmark: avg@n (mean accuracy over all
samples; with n=1 and temperature 0 that is greedy accuracy), pass@k (unbiased estimator) for
each k <= n, the fraction of completions with a \\boxed{} answer, status counts, response length
and throughput.

Outputs (`--out DIR`): results.json (one record per model), results.md (the layout of the EGSW
paper's Tables 1-2, arXiv 2503.22456: rows = models / runs, columns = benchmarks, accuracy in
percent) and samples.jsonl (every completion with its grade). For a run directory `--out`
defaults to `<run>/eval`.

`--compare` groups final results (results.json files, eval output folders, or run directories
with periodic-eval rows) by label: mean ± sample std per benchmark, written to compare.md /
compare.json in `--out`. The comparison itself is `egsw_rl.compare.compare_results`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from egsw_rl import prompts
from egsw_rl.compare import CompareError, compare_results, write_comparison
from egsw_rl.eval.benchmarks import DEFAULT_BENCHMARKS, load_benchmark, parse_benchmarks
from egsw_rl.eval.grader import Grader
from egsw_rl.eval.loop import EvalError, evaluate, generator_fn
from egsw_rl.eval.models import ModelSpec, prompt_for, render_prompts, resolve_model
from egsw_rl.eval.tables import results_markdown

RESULTS_FORMAT = 1


def _settings(args) -> dict:
    return {
        "n": args.n,
        "ks": args.ks,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_tokens": args.max_tokens,
        "prompt": args.prompt,
        "seed": args.seed,
        "limit": args.limit,
        "extraction": args.extraction,
        "fallback_last_number": args.fallback_last_number,
    }


def _max_model_len(path: str, lengths: Sequence[int], max_tokens: int, requested: int | None) -> int:
    """The engine's context: --max-model-len, else the longest prompt + --max-tokens, capped at the
    model's positions (prompts that then do not fit are scored `overlong_prompt`, not fatal)."""
    if requested:
        return requested
    need = max(lengths, default=0) + max_tokens + 8
    try:
        from transformers import AutoConfig

        limit = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 0) or 0)
    except Exception:
        limit = 0
    if limit and need > limit:
        if max_tokens >= limit:
            raise EvalError(
                f"--max-tokens {max_tokens} leaves no room for a prompt in the model's "
                f"{limit} positions; lower --max-tokens"
            )
        return limit
    return ((need + 63) // 64) * 64


def evaluate_model(
    model: ModelSpec, problems: Mapping[str, list], args, grader: Grader, samples_out: list | None = None
) -> dict:
    """One model: start a vLLM engine (egsw_rl.actors.generator.Generator, in this process),
    generate, grade; returns the results.json record."""
    from transformers import AutoTokenizer

    from egsw_rl.actors.generator import Generator
    from egsw_rl.config import ModelConfig, RolloutConfig, resolve_device

    device = resolve_device(args.device)
    tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=args.trust_remote_code)
    prompt = prompt_for(model, args.prompt)
    rendered = {b: render_prompts(tok, [p.question for p in ps], prompt) for b, ps in problems.items()}
    length = {}
    for b, ps in problems.items():
        for p, ids in zip(ps, prompts.encode_prompts(tok, rendered[b], prompt)):
            length[p.question] = len(ids)
    max_len = _max_model_len(model.path, list(length.values()), args.max_tokens, args.max_model_len)
    budget = max_len - args.max_tokens
    enforce_eager = args.enforce_eager if args.enforce_eager is not None else device == "cpu"
    template = "chat" if prompt in prompts.CHAT_TEMPLATES else prompt  # chat: no extra special tokens
    rollout = RolloutConfig(
        num_generators=1,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kvcache_gib=args.kv_cache_gib,
        max_model_len=max_len,
        enforce_eager=enforce_eager,
        seed=args.seed,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        logprobs=0,
        prompt_template=template,
    )
    t0 = time.perf_counter()
    gen = Generator(
        ModelConfig(path=model.path, dtype=args.dtype, trust_remote_code=args.trust_remote_code),
        rollout,
        device,
    )
    start_s = time.perf_counter() - t0
    print(
        f"[eval] {model.name}: vLLM engine up in {start_s:.1f} s ({model.path})", file=sys.stderr, flush=True
    )
    by_question = {}
    for b, ps in problems.items():
        for p, prompt in zip(ps, rendered[b]):
            by_question[p.question] = prompt
    try:
        fn = generator_fn(gen, render=lambda qs: [by_question[q] for q in qs])
        t1 = time.perf_counter()
        res = evaluate(
            fn,
            problems,
            n=args.n,
            ks=args.ks,
            grader=grader,
            batch_size=args.batch_size,
            samples_out=samples_out,
            too_long=lambda qs: [length[q] > budget for q in qs],
            progress=lambda m: print(f"[eval] {model.name}: {m}", file=sys.stderr, flush=True),
        )
        total_s = time.perf_counter() - t1
    finally:
        gen.close()
    tokens = sum(r.tokens or 0 for r in res.values())
    gen_s = sum(r.generate_s for r in res.values())
    return {
        "name": model.name,
        "label": model.label,
        "model": model.spec,
        "model_path": model.path,
        "run_dir": model.run_dir,
        "step": model.step,
        "settings": {**_settings(args), "prompt": prompt, "max_model_len": max_len},
        "benchmarks": {b: r.to_json() for b, r in res.items()},
        "timing": {
            "engine_start_s": start_s,
            "eval_s": total_s,
            "generate_s": gen_s,
            "tokens": tokens,
            "tokens_per_s": tokens / gen_s if gen_s else None,
            "problems_per_s": (sum(r.problems for r in res.values()) / total_s if total_s else None),
        },
    }


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m egsw_rl.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        nargs="+",
        help="HF folder, hub name, tiny / smollm2, run directory or "
        "checkpoint directory; several are evaluated one after the other",
    )
    p.add_argument(
        "--label",
        nargs="+",
        help="group label per --model (default: the run's algo.name, "
        "else the model name); --compare groups by it",
    )
    p.add_argument(
        "--benchmarks",
        default=",".join(DEFAULT_BENCHMARKS),
        help="comma-separated: math500, aime24, aime25, gsm8k, gpqa_diamond, or NAME=PATH "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--gpqa", help="GPQA-Diamond file (.csv as published / .jsonl / .parquet); adds gpqa_diamond"
    )
    p.add_argument("--limit", type=int, default=None, help="first N problems per benchmark")
    p.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    p.add_argument(
        "--k",
        dest="ks",
        type=_int_list,
        default=None,
        help="pass@k values, comma-separated (default: 1 and n)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument(
        "--max-tokens", type=int, default=3000, help="new tokens per completion (default %(default)s)"
    )
    p.add_argument("--max-model-len", type=int, default=None, help="default: longest prompt + max-tokens")
    p.add_argument(
        "--prompt",
        default=None,
        help="qwen_math, qwen_math_user, chat, or a template containing "
        "{question} (default: a run's own rollout.prompt_template, else qwen_math)",
    )
    p.add_argument(
        "--extraction",
        default="boxed_then_latex",
        help="answer extraction of egsw_rl.rewards (boxed | boxed_then_latex | boxed_then_any)",
    )
    p.add_argument(
        "--fallback-last-number",
        action="store_true",
        help="grade the last number when nothing is boxed or anchored",
    )
    p.add_argument("--seed", type=int, default=0, help="engine seed (and GPQA option shuffling)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="problems per generate call (progress is reported per call)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        default=float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 1) or 1),
        help="CPU only: KV cache size (default $VLLM_CPU_KVCACHE_SPACE or 1)",
    )
    p.add_argument(
        "--enforce-eager",
        dest="enforce_eager",
        action="store_true",
        default=None,
        help="no CUDA graphs / torch.compile (default on CPU)",
    )
    p.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--reward-workers", type=int, default=2)
    p.add_argument("--reward-timeout", type=float, default=10.0, help="seconds per graded sample")
    p.add_argument(
        "--out",
        help="write results.json, results.md, samples.jsonl here (default for a run directory: <run>/eval)",
    )
    p.add_argument("--no-samples", action="store_true", help="do not write samples.jsonl")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULTS_OR_RUN",
        help="compare mode: results.json files, eval output dirs or run dirs; mean ± std per label",
    )
    p.add_argument("--labels", help="compare mode: comma-separated label per input (default: stored labels)")
    p.add_argument(
        "--label-key", help="compare mode: derive labels from each run's config.yaml key, e.g. algo.name"
    )
    p.add_argument("--metric", default="accuracy", help="compare mode: accuracy (avg@n) or pass@k")
    return p


def _write(out: Path, records: list[dict], samples: list | None, metric_tables: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"egsw_rl_eval": RESULTS_FORMAT, "results": records}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.rename(out / "results.json")
    (out / "results.md").write_text(metric_tables + "\n")
    if samples is not None:
        with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")


def _tables(records: list[dict], ks: Sequence[int]) -> str:
    parts = [results_markdown(records)]
    for k in ks:
        if k > 1:
            parts.append(results_markdown(records, f"pass@{k}"))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The engine core runs in this process (no separate scheduler process to leave a core for);
    # without this vLLM CPU drops torch to one thread fewer than the cores (2 -> 1 here: measured
    # 19 vs 28 tokens/s on SmolLM2). An explicit OMP_NUM_THREADS wins.
    if hasattr(os, "sched_getaffinity"):
        os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.compare:  # final results of several runs: egsw_rl.compare's, under eval's flags
            labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
            md, summary = compare_results(
                args.compare, labels=labels, metric=args.metric, label_key=args.label_key
            )
            print(md)
            if args.out:
                write_comparison(Path(args.out), md, summary)
            return 0
        if not args.model:
            raise EvalError("give --model (or --compare)")
        if args.n < 1:
            raise EvalError("--n must be >= 1")
        if args.n > 1 and args.temperature == 0:
            raise EvalError(
                "--n > 1 with --temperature 0 draws the same greedy completion n times; "
                "use --n 1, or sample (e.g. --temperature 0.6 --top-p 0.95)"
            )
        if args.label and len(args.label) != len(args.model):
            raise EvalError(f"--label gives {len(args.label)} labels for {len(args.model)} models")
        args.ks = sorted({k for k in (args.ks or [1, args.n]) if 1 <= k <= args.n})
        models = [resolve_model(m, args.label[i] if args.label else None) for i, m in enumerate(args.model)]
        problems = {
            name: load_benchmark(name, path, limit=args.limit, seed=args.seed)
            for name, path in parse_benchmarks(args.benchmarks, args.gpqa)
        }
        out = (
            Path(args.out)
            if args.out
            else (Path(models[0].run_dir) / "eval" if len(models) == 1 and models[0].run_dir else None)
        )
        records: list[dict] = []
        samples: list | None = None if args.no_samples or out is None else []
        with Grader(
            workers=args.reward_workers,
            timeout_s=args.reward_timeout,
            extraction=args.extraction,
            fallback_last_number=args.fallback_last_number,
        ) as grader:
            for m in models:
                rec_samples: list | None = [] if samples is not None else None
                rec = evaluate_model(m, problems, args, grader, rec_samples)
                if samples is not None:
                    samples += [dict(s, model=m.name) for s in rec_samples]
                records.append(rec)
                if out is not None:  # after each model, so a crash keeps what was done
                    _write(out, records, samples, _tables(records, args.ks))
        print(_tables(records, args.ks))
        for r in records:
            t = r["timing"]
            tps = f"{t['tokens_per_s']:.0f}" if t["tokens_per_s"] else "-"
            print(
                f"\n{r['name']}: engine start {t['engine_start_s']:.1f} s, eval {t['eval_s']:.1f} s, "
                f"{t['tokens']} tokens generated at {tps} tokens/s",
                file=sys.stderr,
            )
        if out is not None:
            print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}", file=sys.stderr)
        return 0
    except Exception as e:
        from egsw_rl.data import DataError
        from egsw_rl.models.smollm2 import SmolLM2Unavailable

        # user errors: one line, no traceback
        if isinstance(e, (EvalError, CompareError, DataError, SmolLM2Unavailable)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
