"""The filter on vLLM's reload chatter: the two known-benign lines go, everything else stays."""

import logging

from egsw_rl.actors import vllm_logs


def _record(msg, *args, level=logging.WARNING):
    return logging.LogRecord(
        "vllm.model_executor.model_loader.reload.layerwise", level, __file__, 1, msg, args, None
    )


def test_only_the_benign_reload_warnings_are_dropped():
    tied = vllm_logs.BenignReloadFilter(tied_head=True)
    assert not tied.filter(_record("%s: Failed to load weights", "RotaryEmbedding"))
    assert not tied.filter(_record("%s: Failed to load weights", "Llama3RotaryEmbedding"))
    assert not tied.filter(_record("%s: Failed to load weights", "ParallelLMHead"))
    assert tied.filter(_record("%s: Failed to load weights", "QKVParallelLinear"))  # a real problem
    assert tied.filter(_record("Following weights were not loaded from checkpoint: %s", {"x"}))
    assert tied.filter(_record("anything else", level=logging.ERROR))
    # the INFO lines of every sync go; the same text at WARNING, or other INFO lines, stay
    assert not tied.filter(
        _record("Reloading and processing weights took %.2f seconds", 0.03, level=logging.INFO)
    )
    assert not tied.filter(_record("Successfully reset prefix cache", level=logging.INFO))
    assert tied.filter(_record("Successfully reset prefix cache", level=logging.WARNING))
    assert tied.filter(_record("Loading weights took %.2f seconds", 1.0, level=logging.INFO))
    untied = vllm_logs.BenignReloadFilter(tied_head=False)  # an untied head must load: keep it
    assert untied.filter(_record("%s: Failed to load weights", "ParallelLMHead"))
    assert not untied.filter(_record("%s: Failed to load weights", "RotaryEmbedding"))


def test_debug_level_filters_nothing(monkeypatch):
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    before = list(logger.filters)
    try:
        monkeypatch.setenv(vllm_logs.LEVEL_ENV, "debug")
        vllm_logs.quiet_benign_reload(tied_head=True)
        assert logger.filters == before
        monkeypatch.setenv(vllm_logs.LEVEL_ENV, "info")
        vllm_logs.quiet_benign_reload(tied_head=True)
        vllm_logs.quiet_benign_reload(tied_head=True)  # idempotent
        assert sum(isinstance(f, vllm_logs.BenignReloadFilter) for f in logger.filters) == 1
    finally:
        logger.filters[:] = before
