"""The checks of GeNAdaPEFT's options, each with the fix in its message."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from .inner import _check_inner, _check_takes_batch, _world_size
from .masking import SwitchPolicy, check_method
from .trace import _is_dtensor


def check_options(
    optimizer: Any,
    closure: Any,
    probe_data: Any,
    lazy: Any,
    r2_min: float,
    smoothing: float,
    max_change: float,
    z: float,
    loss_rtol: float | None,
    max_spacing: float,
    budget: Any,
    select_after: Any,
    stable_probes: Any,
    select_method: Any,
    max_lr_factor: Any,
    max_interval: Any,
    history_size: Any,
) -> None:
    """Raise a ``TypeError``/``ValueError`` naming the first bad option and its fix."""
    if type(optimizer).__name__ == "GeNAdaPEFT":
        raise TypeError("optimizer is already a GeNAdaPEFT; wrap the inner optimizer once")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer (e.g. torch.optim.AdamW), got {type(optimizer).__name__}"
        )
    if closure is not None and not callable(closure):
        raise TypeError(f"closure must be callable (e.g. lambda: model(**batch).loss), got {type(closure).__name__}")
    if isinstance(lazy, bool) or not isinstance(lazy, int) or lazy < 0:
        raise ValueError(f"Invalid lazy: {lazy!r}; use an int >= 0 (0 turns probing off)")
    _check_fit_options(r2_min, smoothing, max_change, z, loss_rtol, max_spacing)
    _check_switch(budget, select_after, stable_probes, select_method)
    _check_inner(optimizer)
    if not (isinstance(max_lr_factor, (int, float)) and math.isfinite(max_lr_factor) and max_lr_factor >= 1.0):
        raise ValueError(f"Invalid max_lr_factor: {max_lr_factor!r}; use a finite value >= 1")
    if probe_data is not None:
        if not isinstance(probe_data, Iterable) or isinstance(probe_data, Mapping) or torch.is_tensor(probe_data):
            raise TypeError(
                "probe_data must be an iterable of batches (a list, a DataLoader), got "
                f"{type(probe_data).__name__}; for one batch pass [batch]"
            )
        if closure is not None:
            _check_takes_batch(closure)
    if isinstance(max_interval, bool) or not isinstance(max_interval, int) or max_interval < 1:
        raise ValueError(f"Invalid max_interval: {max_interval!r}; use an int >= 1 (1: every group every probe)")
    if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
        raise ValueError(f"Invalid history_size: {history_size!r}; use an int >= 0 (records kept)")


def _check_fit_options(
    r2_min: float, smoothing: float, max_change: float, z: float, loss_rtol: float | None, max_spacing: float
) -> None:
    if not 0.0 <= r2_min <= 1.0:
        raise ValueError(f"Invalid r2_min: {r2_min}; use a value in [0, 1]")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"Invalid smoothing: {smoothing}; use a value in [0, 1)")
    if not (math.isfinite(max_change) and max_change >= 1.0):
        raise ValueError(f"Invalid max_change: {max_change}; use a finite value >= 1")
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError(f"Invalid z: {z}; use a finite value >= 0")
    if loss_rtol is not None and not (math.isfinite(loss_rtol) and loss_rtol >= 0.0):
        raise ValueError(f"Invalid loss_rtol: {loss_rtol}; use a finite value >= 0 or None")
    if not (math.isfinite(max_spacing) and max_spacing >= 1.0):
        raise ValueError(f"Invalid max_spacing: {max_spacing}; use a finite value >= 1")


def _check_switch(budget: Any, select_after: Any, stable_probes: Any, select_method: Any) -> None:
    if (select_after is not None or stable_probes is not None) and budget is None:
        raise ValueError("select_after/stable_probes need budget= (the fraction of parameters to keep training)")
    for key, value in (("select_after", select_after), ("stable_probes", stable_probes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"Invalid {key}: {value!r}; use an int >= 1 or None")
    if budget is not None:  # the switch's own checks (budget, method): one place for them
        SwitchPolicy(budget, method=select_method, at=select_after, stable_probes=stable_probes)
    else:
        check_method(select_method)


SLOPES = ("auto", "backward", "stencil")
# The default points by slope mode (Note [Slopes from a backward pass] in probe.py): a symmetric
# pair when b comes from a backward pass (A free of the odd, cubic term; R² informative), the
# paper's four when the stencil fits b and A.
DEFAULT_SCALES = {"backward": (-2.0, 2.0), "stencil": (-2.0, -1.0, 1.0, 2.0)}


def check_slope(slope: Any) -> str:
    if slope not in SLOPES:
        raise ValueError(f"Invalid slope: {slope!r}; use one of {', '.join(map(repr, SLOPES))}")
    return slope


def check_slope_engine(slope: str, params: list[torch.Tensor]) -> None:
    """``slope="backward"`` is refused across ranks, at construction (Note [Slopes from a backward
    pass] in probe.py)."""
    if slope == "backward" and (_world_size() > 1 or any(_is_dtensor(p) for p in params)):
        raise ValueError(
            "slope='backward' runs a backward pass outside the training step, which DDP's and FSDP2's "
            "gradient hooks would see; across ranks use slope='stencil' (or 'auto', which picks it)"
        )


def check_scales(scales: Sequence[float] | None, slope: str) -> tuple[float, ...] | None:
    """The probe points of ``slope``'s mode; ``None`` (the default) stays ``None``: each probe
    uses :data:`DEFAULT_SCALES` of the mode it runs in."""
    if scales is None:
        return None
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid scales: {scales!r}; use a sequence of numbers such as (-2, -1, 1, 2)") from None
    if any(not math.isfinite(s) or s == 0.0 for s in values):
        raise ValueError(f"Invalid scales: {scales!r}; every scale must be finite and non-zero (L0 is always measured)")
    if len(set(values)) != len(values) or not values:
        raise ValueError(f"Invalid scales: {scales!r}; use distinct scales, e.g. (1,), (-1, 1) or (-2, -1, 1, 2)")
    if len(values) < 2 and slope != "backward":
        raise ValueError(
            f"Invalid scales: {scales!r}; with slope={slope!r} b and A are both fitted (the stencil), which "
            "needs at least two distinct scales, e.g. (-1, 1) or (-2, -1, 1, 2); one scale needs slope='backward'"
        )
    return values
