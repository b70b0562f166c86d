"""`--only generate` names the entropy the actor computed: exact, or the top-k estimator and its k."""

from egsw_rl.bench.generate import _entropy_label
from egsw_rl.config import RolloutConfig


def test_entropy_label_names_the_estimator_and_k_only_for_top_k():
    assert _entropy_label(RolloutConfig()) == "exact"  # the default
    assert _entropy_label(RolloutConfig(entropy_estimator="lower_bound", logprobs=5)) == "lower_bound, k=5"
    assert _entropy_label({"entropy_estimator": "upper_bound", "logprobs": 20}) == "upper_bound, k=20"
