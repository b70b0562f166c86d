"""Name -> function registries so a config selects algorithms by name.

Every registered function has one of three uniform signatures, so `shape_batch` can chain them:

- advantage: fn(rewards[N], entropy[N,T], mask[N,T], *, group_size, **params) -> A[N,T]
- mask:      fn(advantages[N,T], entropy[N,T], mask[N,T], *, sampled_logprobs, clipv_n, **params)
             -> new mask[N,T] (bool, a subset of mask)
- weighting: fn(advantages[N,T], entropy[N,T], mask[N,T], *, group_size, vocab_size, **params)
             -> W[N,T] (0 on padding)

Each function picks the params it knows by name and ignores the rest (**params).
"""

from __future__ import annotations

from typing import Callable

ADVANTAGES: dict[str, Callable] = {}
MASKS: dict[str, Callable] = {}
WEIGHTS: dict[str, Callable] = {}


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def _get(table: dict[str, Callable], kind: str, name: str) -> Callable:
    if name not in table:
        raise ValueError(f"{kind} must be one of {sorted(table)}, got {name!r}")
    return table[name]


def register_advantage(name: str) -> Callable[[Callable], Callable]:
    return _register(ADVANTAGES, "advantage", name)


def register_mask(name: str) -> Callable[[Callable], Callable]:
    return _register(MASKS, "token_mask", name)


def register_weighting(name: str) -> Callable[[Callable], Callable]:
    return _register(WEIGHTS, "weighting", name)


def get_advantage(name: str) -> Callable:
    return _get(ADVANTAGES, "advantage", name)


def get_mask(name: str) -> Callable:
    return _get(MASKS, "token_mask", name)


def get_weighting(name: str) -> Callable:
    return _get(WEIGHTS, "weighting", name)
