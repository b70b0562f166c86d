"""What vLLM prints inside a generator actor: everything, except the lines its in-place weight
reload writes on every sync that are known to be benign here.

vLLM's layer-wise reload warns "<Layer>: Failed to load weights" for every layer that received no
tensor in a reload. Two do so by design on every push: rotary embeddings (their cos/sin cache is a
buffer, never part of a state dict) and a tied output head (its weight is the embedding's, which
the sync loads, and the head is re-packed after the reload). Every other layer in that warning is a
real problem and still shows, as does every other vLLM warning and error. With
`logger.level=debug` (EGSW_RL_LOG_LEVEL=debug in the actors) nothing is filtered and vLLM logs at
DEBUG.
"""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "EGSW_RL_LOG_LEVEL"
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload"
_BENIGN_EMPTY_RELOAD = ("RotaryEmbedding", "ParallelLMHead")


class BenignReloadFilter(logging.Filter):
    """Drops "<Layer>: Failed to load weights" for rotary embeddings, and for the output head when
    the model ties it to the embeddings."""

    def __init__(self, tied_head: bool) -> None:
        super().__init__()
        self.benign = tuple(n for n in _BENIGN_EMPTY_RELOAD if tied_head or n != "ParallelLMHead")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "%s: Failed to load weights" or not record.args:
            return True
        layer = str(record.args[0])
        return not any(layer.endswith(name) for name in self.benign)


def debug() -> bool:
    return os.environ.get(LEVEL_ENV, "info").lower() == "debug"


def before_engine_start() -> None:
    """Call before vLLM is imported: at debug level vLLM itself logs at DEBUG."""
    if debug():
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG")


def quiet_benign_reload(tied_head: bool) -> None:
    """Install the filter on the loggers of vLLM's reload package (idempotent)."""
    if debug():
        return
    for name in (_RELOAD_LOGGER, f"{_RELOAD_LOGGER}.layerwise", f"{_RELOAD_LOGGER}.inplace"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, BenignReloadFilter) for f in logger.filters):
            logger.addFilter(BenignReloadFilter(tied_head))
