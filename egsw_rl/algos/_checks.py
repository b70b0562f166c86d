"""Argument checks shared by the algorithm modules (every error names the offending argument)."""

from __future__ import annotations

import torch
from torch import Tensor


def work_dtype(*xs: Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (tests, references), else float32."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32


def tensor(x: object, name: str, dim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(x.shape)}")
    return x


def mask2d(mask: object, name: str = "mask") -> Tensor:
    m = tensor(mask, name, 2)
    if m.dtype != torch.bool:
        if m.is_floating_point() and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name} must be boolean (or 0/1), got non-binary values")
        m = m.bool()
    return m


def same_shape(x: Tensor, ref: Tensor, name: str, ref_name: str = "mask") -> Tensor:
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")
    return x


def group_size(n: int, g: object) -> int:
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f"group_size must be a positive int, got {g!r}")
    if n % g != 0:
        raise ValueError(f"group_size={g} does not divide the number of sequences N={n}")
    return g


def choice(value: object, name: str, allowed: tuple[str, ...] | set[str] | dict) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]


def per_token(adv: Tensor, mask: Tensor, name: str = "advantages") -> Tensor:
    """[N] or [N, T] advantages -> [N, T] (broadcast over positions)."""
    tensor(adv, name)
    if adv.dim() == 1:
        if adv.shape[0] != mask.shape[0]:
            raise ValueError(f"{name} [N] must have N={mask.shape[0]} entries, got {adv.shape[0]}")
        return adv[:, None].expand(mask.shape)
    if adv.dim() == 2:
        return same_shape(adv, mask, name)
    raise ValueError(f"{name} must be [N] or [N, T], got shape {tuple(adv.shape)}")
