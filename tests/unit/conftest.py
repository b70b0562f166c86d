"""Fixtures of the pure unit tests."""

import pytest


@pytest.fixture
def step_row():
    """step_row(step, gen=..., **overrides): one metrics.jsonl row of a trainer step, with every
    timing and token key the bench's step arithmetic reads."""

    def row_of(step, gen=1.0, rew=0.1, lp=0.0, upd=2.0, sync=0.5, extra=0.2, **kw):
        row = {
            "step": step,
            "timing/generate_s": gen,
            "timing/reward_s": rew,
            "timing/logprobs_s": lp,
            "timing/update_s": upd,
            "timing/sync_s": sync,
            "timing/shape_s": 0.01,
            "timing/step_s": gen + rew + lp + upd + sync + extra,
            "tokens/generated": 300,
            "actor/train_tokens": 1800.0,
            "actor/padding_frac": 0.1,
            "response_length/mean": 4.5,
            "policy_lag/mean": 0.0,
            "sync/bytes": 1.0e6,
            "sync/send_s": 0.2,
            "sync/load_s": 0.1,
            "sync/recv_s": 0.4,
        }
        row.update(kw)
        return row

    return row_of


@pytest.fixture
def eval_record():
    """eval_record(name, label, {benchmark: accuracy}, n=, pass_k=): one model's results.json
    record as `python -m egsw_rl.eval` writes it."""

    def record_of(name, label, accs, n=1, pass_k=None):
        return {
            "name": name,
            "label": label,
            "settings": {
                "n": n,
                "ks": [1],
                "temperature": 0.0,
                "top_p": 1.0,
                "max_tokens": 64,
                "prompt": "qwen_math",
                "limit": 5,
            },
            "benchmarks": {b: {"accuracy": a, "pass_at_k": dict(pass_k or {})} for b, a in accs.items()},
        }

    return record_of
