"""Name -> method registries: the one list of what `algo.advantage`, `algo.token_mask` and
`algo.weighting` may name (the config check reads them; nothing copies them).

A registered function has the uniform signature of its kind, so `shape_batch` can chain them:

- advantage: fn(rewards[N], entropy[N,T], mask[N,T], *, group_size, **reads) -> A[N] or A[N,T]
- mask:      fn(advantages[N,T], entropy[N,T], mask[N,T], *, sampled_logprobs, clipv_n, **reads)
             -> new mask[N,T] (bool, a subset of mask)
- weighting: fn(advantages[N,T], entropy[N,T], mask[N,T], *, group_size, vocab_size, **reads)
             -> W[N,T] (0 on padding)

`reads` names the algo config fields (`algo.<name>`) the function takes as keywords of the same
name: `shape_batch` passes exactly those, read from the run's algo config, and nothing else. A
field set to None is not passed, so the function's own default applies (ClipB's and ClipV's mu).
So a new method is one registered function plus one `conf/algo/*.yaml`; a new parameter is also
one field of `config.AlgoConfig`, where Hydra checks its type and refuses a misspelt key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    """One registered function and what it needs besides the batch's rewards and mask."""

    kind: str  # advantage | token_mask | weighting (the algo config key that selects it)
    name: str
    fn: Callable
    reads: tuple[str, ...] = ()  # algo config fields passed to fn by name
    # Reads the per-token entropy H. The config check then needs an entropy the run can provide:
    # the exact engine entropy or a top-k estimate with rollout.logprobs >= 1, and an untruncated
    # sampling distribution (or algo.entropy_source=learner).
    entropy: bool = False
    # Needs statistics only the learner's full-vocabulary pass gives (ClipV's N): the config
    # check asks for algo.entropy_source=learner.
    learner_entropy: bool = False
    # fn(W, M', *, group_size, **params) -> float metrics, logged with this weighting
    diagnostics: Callable[..., dict[str, float]] | None = None

    def params(self, algo: Any) -> dict[str, Any]:
        """The keywords `fn` takes from the algo config (attributes named as in `reads`)."""
        out = {}
        for key in self.reads:
            try:
                value = getattr(algo, key)
            except AttributeError:
                raise ValueError(
                    f"{self.kind} {self.name!r} reads algo.{key}, which the algo "
                    "config does not have (add it to config.AlgoConfig)"
                ) from None
            if value is not None:
                out[key] = value
        return out


ADVANTAGES: dict[str, Method] = {}
MASKS: dict[str, Method] = {}
WEIGHTS: dict[str, Method] = {}
_TABLES = {"advantage": ADVANTAGES, "token_mask": MASKS, "weighting": WEIGHTS}


def _register(kind: str, name: str, reads, **flags) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        table = _TABLES[kind]
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = Method(kind, name, fn, tuple(reads), **flags)
        return fn

    return deco


def _get(kind: str, name: str) -> Method:
    table = _TABLES[kind]
    if name not in table:
        raise ValueError(f"{kind} must be one of {sorted(table)}, got {name!r}")
    return table[name]


def register_advantage(name: str, *, reads=(), entropy: bool = False) -> Callable[[Callable], Callable]:
    return _register("advantage", name, reads, entropy=entropy)


def register_mask(
    name: str, *, reads=(), entropy: bool = False, learner_entropy: bool = False
) -> Callable[[Callable], Callable]:
    return _register("token_mask", name, reads, entropy=entropy, learner_entropy=learner_entropy)


def register_weighting(
    name: str, *, reads=(), entropy: bool = False, diagnostics: Callable | None = None
) -> Callable[[Callable], Callable]:
    return _register("weighting", name, reads, entropy=entropy, diagnostics=diagnostics)


def get_advantage(name: str) -> Method:
    return _get("advantage", name)


def get_mask(name: str) -> Method:
    return _get("token_mask", name)


def get_weighting(name: str) -> Method:
    return _get("weighting", name)


def selected(algo: Any) -> list[Method]:
    """The advantage, token mask and weighting an algo config selects, in that order."""
    return [get_advantage(algo.advantage), get_mask(algo.token_mask), get_weighting(algo.weighting)]
