"""Numpy building blocks of the figures (no matplotlib): the IQR fence, the EMA and the
per-group PPI matrix of a probe history (Note [valued probes] in :mod:`adapeft_optim.plots`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._common import _as_1d_float, _check_nonnegative, _records


def iqr_mask(values: Iterable[float], k: float = 3.0) -> np.ndarray:
    """Boolean mask of the values inside the interquartile-range fence.

    A value ``x`` is kept when ``Q1 - k * IQR <= x <= Q3 + k * IQR`` (both ends included),
    with ``Q1``/``Q3`` the 25th/75th percentiles of the finite values and
    ``IQR = Q3 - Q1``. The percentiles are numpy's default (``np.percentile`` with
    ``method="linear"``): for ``n`` sorted values ``v_0 <= ... <= v_{n-1}`` the ``p``-th
    percentile is ``v_i + f * (v_{i+1} - v_i)`` where ``i + f = p / 100 * (n - 1)``.
    The paper (Appendix A.1, footnote 2) uses ``k = 3``.

    Non-finite values (NaN, +-inf) are outside the fence and take no part in the
    quartiles; with no finite value at all the mask is all ``False``.

    Args:
        values: 1-D sequence of numbers.
        k: fence width in IQRs, finite and ``>= 0`` (default: 3.0)

    Returns:
        ``np.ndarray`` of ``bool`` with the shape of ``values``.
    """
    k = _check_nonnegative("k", k)
    x = _as_1d_float("values", values)
    finite = np.isfinite(x)
    if not finite.any():
        return finite
    q1, q3 = np.percentile(x[finite], [25.0, 75.0])
    iqr = q3 - q1
    with np.errstate(invalid="ignore"):
        return finite & (x >= q1 - k * iqr) & (x <= q3 + k * iqr)


def ema(values: Iterable[float], alpha: float = 0.9) -> np.ndarray:
    """Exponential moving average that skips missing values.

    Convention: ``alpha`` is the weight on the *past*,

        s_0 = x_0,    s_t = alpha * s_{t-1} + (1 - alpha) * x_t,

    so ``alpha = 0`` returns the input (gaps filled) and larger ``alpha`` smooths more (pandas'
    ``ewm(alpha=a, adjust=False, ignore_na=True)`` is this with ``alpha = 1 - a``). The
    series starts at the first finite value (earlier positions stay NaN); a non-finite
    ``x_t`` after that is skipped, i.e. ``s_t = s_{t-1}`` is carried forward.

    Args:
        values: 1-D sequence of numbers; NaN (or +-inf) marks a missing value.
        alpha: weight on the previous average, in ``[0, 1]`` (default: 0.9)

    Returns:
        ``np.ndarray`` of ``float64`` with the shape of ``values``.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Invalid alpha: {alpha}; it is the weight on the past and must be in [0, 1]")
    x = _as_1d_float("values", values)
    out = np.full_like(x, np.nan)
    s = math.nan
    for t, xt in enumerate(x.tolist()):
        if math.isfinite(xt):
            s = xt if math.isnan(s) else alpha * s + (1.0 - alpha) * xt
        out[t] = s
    return out


def ppi_matrix(history: Any, groups: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-group PPI at every probe step, as a (groups x probe steps) array.

    Cell ``[i, j]`` is the ``ppi`` of the record of group ``names[i]`` at step ``steps[j]``
    when that probe was valued (Note [valued probes]), and NaN when it was not, when the group
    was not probed at that step (e.g. after masking) or when its ``ppi`` is not finite.

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        groups: the rows, in this order; every name must occur in ``history``. ``None`` takes
            every group in the order of first appearance (default: None)

    Returns:
        ``(names, steps, matrix)``: ``names`` a list of group names, ``steps`` the sorted
        distinct probe steps of those groups (``int64``), ``matrix`` a ``float64`` array of
        shape ``(len(names), len(steps))``.

    Raises:
        ValueError: a record misses a key, ``groups`` names a group that is not in the
            history or repeats one, or one group has two records at the same step.
    """
    names, steps, matrix, _ = _ppi_and_weights(history, groups)
    return names, steps, matrix


def _ppi_and_weights(
    history: Any, groups: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ppi_matrix` and, alongside, each cell's weight: the probe steps a probe stands for
    (record ``weight``; 1 where absent, Note [Settled groups] in optimizer.py)."""
    records = _records(history)
    seen: dict[str, None] = {}
    for rec in records:
        seen.setdefault(rec[1], None)
    if groups is None:
        names = list(seen)
    else:
        if isinstance(groups, str):
            raise TypeError(f"groups must be a sequence of group names, got the string {groups!r}; wrap it in a list")
        names = list(groups)
        duplicates = sorted({g for g in names if names.count(g) > 1})
        if duplicates:
            raise ValueError(f"groups repeats {duplicates}; give each group once")
        unknown = [g for g in names if g not in seen]
        if unknown:
            raise ValueError(f"groups {unknown} have no record in the history; groups in the history: {list(seen)}")
    row = {g: i for i, g in enumerate(names)}
    kept = [rec for rec in records if rec[1] in row]
    steps = np.array(sorted({rec[0] for rec in kept}), dtype=np.int64)
    col = {int(s): j for j, s in enumerate(steps)}
    matrix = np.full((len(names), len(steps)), np.nan)
    weights = np.ones(matrix.shape)
    filled = np.zeros(matrix.shape, dtype=bool)
    for step, group, ppi, valued, weight in kept:
        i, j = row[group], col[step]
        if filled[i, j]:
            raise ValueError(f"group {group!r} has two records at step {step}; pass the history of one run")
        filled[i, j] = True
        if valued and math.isfinite(ppi):
            matrix[i, j] = ppi
        weights[i, j] = weight
    return names, steps, matrix, weights
