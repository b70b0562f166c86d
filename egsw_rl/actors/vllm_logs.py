"""What vLLM prints inside a generator actor: everything, except the lines its in-place weight
reload writes on every sync that are known to be benign here.

vLLM's layer-wise reload warns "<Layer>: Failed to load weights" for every layer that received no
tensor in a reload. Two do so by design on every push: rotary embeddings (their cos/sin cache is a
buffer, never part of a state dict) and a tied output head (its weight is the embedding's, which
the sync loads, and the head is re-packed after the reload). Every other layer in that warning is a
real problem and still shows, as does every other vLLM warning and error. Two INFO lines that
every sync writes go as well: the reload's timing ("Reloading and processing weights took") and
the prefix cache reset that follows it; a step would otherwise print three vLLM lines into the
progress bar. The prefix-cache line still shows for a TP>1 engine, whose block pool lives in the
engine core process, where the worker extension (which installs the filter) does not run. With
`logger.level=debug` (EGSW_RL_LOG_LEVEL=debug in the actors) nothing is filtered and vLLM logs at
DEBUG.
"""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "EGSW_RL_LOG_LEVEL"
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload"
_BENIGN_EMPTY_RELOAD = ("RotaryEmbedding", "ParallelLMHead")
_BLOCK_POOL_LOGGER = "vllm.v1.core.block_pool"
_PER_SYNC_INFO = ("Reloading and processing weights took %.2f seconds", "Successfully reset prefix cache")


class BenignReloadFilter(logging.Filter):
    """Drops "<Layer>: Failed to load weights" for rotary embeddings, and for the output head when
    the model ties it to the embeddings; and the INFO lines every sync writes."""

    def __init__(self, tied_head: bool) -> None:
        super().__init__()
        self.benign = tuple(n for n in _BENIGN_EMPTY_RELOAD if tied_head or n != "ParallelLMHead")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg in _PER_SYNC_INFO:
            return False
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
    """Install the filter on the loggers of vLLM's reload package and block pool (idempotent)."""
    if debug():
        return
    for name in (
        _RELOAD_LOGGER,
        f"{_RELOAD_LOGGER}.layerwise",
        f"{_RELOAD_LOGGER}.inplace",
        _BLOCK_POOL_LOGGER,
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, BenignReloadFilter) for f in logger.filters):
            logger.addFilter(BenignReloadFilter(tied_head))
