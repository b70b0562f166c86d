"""Rollout importance correction (TIS / MIS) as a pure function, in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from egsw_rl.algos import policy_loss, reduce_rollout_is, rollout_is_weights

F64 = torch.float64


def _case():
    # ratios pi_old / pi_vllm of 1, 3, 0.5 on row 0; row 1: 2.5 and a padding token
    old = torch.tensor([[math.log(0.5), math.log(0.6), math.log(0.1)], [math.log(0.5), 0.0, 0.0]], dtype=F64)
    vllm = torch.tensor(
        [[math.log(0.5), math.log(0.2), math.log(0.2)], [math.log(0.2), -7.0, 0.0]], dtype=F64
    )
    mask = torch.tensor([[True, True, True], [True, False, False]])
    return old, vllm, mask


def test_tis_truncates_mis_zeroes_none_measures():
    old, vllm, mask = _case()
    tis, stats = rollout_is_weights(old, vllm, mask, mode="tis", cap=2.0)
    torch.testing.assert_close(tis, torch.tensor([[1.0, 2.0, 0.5], [2.0, 0.0, 0.0]], dtype=F64))
    mis, _ = rollout_is_weights(old, vllm, mask, mode="mis", cap=2.0)
    torch.testing.assert_close(mis, torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]], dtype=F64))
    none, _ = rollout_is_weights(old, vllm, mask, mode="none")
    assert torch.equal(none, mask.to(F64))
    # statistics of the raw ratio over the 4 valid tokens (the padding token's e^7 is ignored)
    assert float(stats["sum"]) == pytest.approx(1 + 3 + 0.5 + 2.5)
    assert (float(stats["count"]), float(stats["clipped"])) == (4.0, 2.0)
    assert float(stats["max"]) == pytest.approx(3.0) and float(stats["min"]) == pytest.approx(0.5)
    m = reduce_rollout_is([stats])
    assert m == pytest.approx(
        {
            "rollout_is/mean": 7.0 / 4,
            "rollout_is/max": 3.0,
            "rollout_is/min": 0.5,
            "rollout_is/clipped_frac": 0.5,
        }
    )


def test_reduce_over_micro_batches_equals_whole_batch():
    old, vllm, mask = _case()
    whole = reduce_rollout_is([rollout_is_weights(old, vllm, mask, cap=2.0)[1]])
    parts = [
        rollout_is_weights(old[i : i + 1], vllm[i : i + 1], mask[i : i + 1], cap=2.0)[1] for i in range(2)
    ]
    empty = rollout_is_weights(old, vllm, torch.zeros_like(mask), cap=2.0)[1]
    assert reduce_rollout_is(parts + [empty]) == pytest.approx(whole)
    assert reduce_rollout_is([empty]) == {}


def test_weights_scale_the_policy_gradient_term_only():
    """TIS on the loss: W * l_pg with ratio 1 is -w * A per token; the gradient of each logprob
    is -w A / n_tokens (token_mean), so a truncated token's gradient is capped at cap * A."""
    old, vllm, mask = _case()
    w, _ = rollout_is_weights(old, vllm, mask, mode="tis", cap=2.0)
    lp = old.clone().requires_grad_()
    adv = torch.ones_like(old)
    loss, _ = policy_loss(lp, old, adv, mask, weights=w, agg="token_mean")
    loss.backward()
    torch.testing.assert_close(lp.grad, -w / 4)


def test_bad_arguments():
    old, vllm, mask = _case()
    with pytest.raises(ValueError, match="mode"):
        rollout_is_weights(old, vllm, mask, mode="clip")
    with pytest.raises(ValueError, match="cap"):
        rollout_is_weights(old, vllm, mask, cap=0.5)
    with pytest.raises(ValueError, match="rollout_logprobs"):
        rollout_is_weights(old, vllm[:, :2], mask)
