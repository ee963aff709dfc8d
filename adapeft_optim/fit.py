"""The math of a probe, on plain numbers: quadratic fit of the loss line, its acceptance test,
the Newton learning rate and the per-parameter influence (design §2, paper eq. 8-14).

Along an update direction ``d`` the loss is, to second order,

    ΔL(η) = L(w - η d) - L(w) ≈ -η b + ½ η² A,      b = Gᵀd,  A = dᵀHd,

so a few forward passes at known ``η`` give ``(b, A)`` by linear least squares. Nothing here
touches an optimizer or a model; everything runs in float64 numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple

import numpy as np

__all__ = [
    "QuadraticFit",
    "Reason",
    "best_reduction",
    "check_fit",
    "fit_curvature",
    "fit_quadratic",
    "newton_update",
    "per_parameter_influence",
]


class QuadraticFit(NamedTuple):
    """Least-squares fit of ``ΔL(η) = -η b + ½ η² A`` through the origin.

    Attributes:
        b: the slope ``Gᵀd`` (positive when ``-d`` is a descent direction).
        A: the curvature ``dᵀHd``.
        r2: coefficient of determination over the probe points and the origin; 1.0 for an exact
            parabola, and 1.0 by construction when only two probes are fitted.
        se_b: standard error of ``b`` (from the residuals and the loss's rounding level).
        se_A: standard error of ``A``, likewise.
    """

    b: float
    A: float
    r2: float
    se_b: float
    se_A: float


def fit_quadratic(etas: Sequence[float], dlosses: Sequence[float], noise: float = 0.0) -> QuadraticFit:
    """Fit ``(b, A)`` in closed form (float64 linear least squares, no starting point to fail from).

    Args:
        etas: probe step sizes ``η_j`` (non-zero, at least two distinct values).
        dlosses: ``L(w - η_j d) - L(w)`` for each ``η_j``.
        noise: the loss's rounding level (absolute); the standard errors use
            ``max(residual sigma, noise)`` so that an exact-looking fit of rounded numbers is not
            mistaken for a precise one (default: 0.0).

    Returns:
        A :class:`QuadraticFit`. Non-finite losses give NaN fields.
    """
    eta = np.asarray(etas, dtype=np.float64)
    y = np.asarray(dlosses, dtype=np.float64)
    if eta.shape != y.shape or eta.ndim != 1:
        raise ValueError(f"etas and dlosses must be 1-D of equal length, got {eta.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        nan = math.nan
        return QuadraticFit(nan, nan, nan, nan, nan)
    # Work in u = η / h (h = max |η|) so the 2x2 system is well conditioned at any lr.
    h = float(np.max(np.abs(eta)))
    u = eta / h
    X = np.stack([-u, 0.5 * u * u], axis=1)
    theta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ theta
    ss_res = float(resid @ resid)
    # R² over the probes and the origin (ΔL(0) = 0 exactly, residual 0).
    r2 = _r2(y, ss_res)
    dof = len(y) - 2
    sigma_full = math.sqrt(ss_res / dof) if dof > 0 else 0.0
    sigma_even = _even_residual_sigma(u, y, float(theta[1]))
    cov = np.linalg.pinv(X.T @ X)
    sigma_b = max(sigma_full, noise)
    sigma_a = max(sigma_full if sigma_even is None else sigma_even, noise)
    b_s, a_s = float(theta[0]), float(theta[1])
    return QuadraticFit(
        b=b_s / h,
        A=a_s / (h * h),
        r2=r2,
        se_b=sigma_b * math.sqrt(max(cov[0, 0], 0.0)) / h,
        se_A=sigma_a * math.sqrt(max(cov[1, 1], 0.0)) / (h * h),
    )


def fit_curvature(etas: Sequence[float], dlosses: Sequence[float], b: float, noise: float = 0.0) -> QuadraticFit:
    """Fit the curvature ``A`` of ``ΔL(η) = -η b + ½ η² A`` with the slope ``b`` known (from a
    backward pass), by least squares through the origin; one point is enough.

    Args:
        etas: probe step sizes ``η_j`` (non-zero).
        dlosses: ``L(w - η_j d) - L(w)`` for each ``η_j``.
        b: the slope ``Gᵀd`` at ``η = 0``, measured on the same loss.
        noise: the loss's rounding level (absolute), the floor of the residual sigma
            (default: 0.0).

    Returns:
        A :class:`QuadraticFit` with ``b`` as given and ``se_b = 0``; ``r2`` is 1.0 by
        construction for a single point. Non-finite losses or slope give NaN fields.
    """
    eta = np.asarray(etas, dtype=np.float64)
    y = np.asarray(dlosses, dtype=np.float64)
    if eta.shape != y.shape or eta.ndim != 1 or eta.size < 1:
        raise ValueError(f"etas and dlosses must be 1-D of equal, non-zero length, got {eta.shape} and {y.shape}")
    if not (np.all(np.isfinite(y)) and math.isfinite(b)):
        nan = math.nan
        return QuadraticFit(nan, nan, nan, nan, nan)
    h = float(np.max(np.abs(eta)))
    u = eta / h
    x = 0.5 * u * u
    r = y + u * (b * h)  # what the curvature term must explain
    a_s = float(x @ r) / float(x @ x)
    resid = r - x * a_s
    ss_res = float(resid @ resid)
    r2 = _r2(y, ss_res)
    dof = len(y) - 1
    # On a symmetric stencil the odd (cubic) part of the line leaves residuals but not A: A's
    # error is measured on the even part alone, as in fit_quadratic.
    even = _even_residual_sigma(u, y, a_s)
    sigma = max((math.sqrt(ss_res / dof) if dof > 0 else 0.0) if even is None else even, noise)
    return QuadraticFit(b=float(b), A=a_s / (h * h), r2=r2, se_b=0.0, se_A=sigma / math.sqrt(float(x @ x)) / (h * h))


def _r2(y: np.ndarray, ss_res: float) -> float:
    """R² over the probes and the origin (ΔL(0) = 0 exactly, residual 0)."""
    y0 = np.append(y, 0.0)
    ss_tot = float(np.sum((y0 - y0.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def _even_residual_sigma(u: np.ndarray, y: np.ndarray, a: float) -> float | None:
    """Residual sigma of the even part ½(ΔL(η) + ΔL(−η)) = ½η²A + O(η⁴), or None.

    On a symmetric stencil the third-order term of the loss is odd: it moves b and the residuals
    of the full fit but not the estimate of A, so the residuals of the even part alone measure
    how well A is known. ``None`` when the stencil is not symmetric.
    """
    order = np.argsort(u)
    if not np.allclose(u[order], -u[order][::-1]):
        return None
    pos = u > 0
    up = u[pos]
    even = 0.5 * (y[pos] + np.array([y[np.argmin(np.abs(u + v))] for v in up]))
    dof = len(up) - 1
    if dof <= 0:
        return 0.0
    resid = even - 0.5 * up * up * a
    # The even part averages two losses: a loss-level sigma is √2 times its sigma.
    return math.sqrt(2.0 * float(resid @ resid) / dof)


class Reason(str, Enum):
    """Why a probe's fit was rejected (record ``"reason"``). A ``str``: it compares, prints and
    serialises as its text."""

    NON_FINITE = "non-finite loss"
    NOISE = "curvature below noise"
    CONCAVE = "non-positive curvature"
    NO_DESCENT = "non-positive slope"
    NOT_PARABOLA = "R2 below r2_min"

    __str__ = str.__str__


def check_fit(fit: QuadraticFit, r2_min: float, z: float = 3.0) -> Reason | None:
    """Why a fit must be rejected, or ``None`` when it is usable.

    The paper's gate (b > 0, A > 0, R² ≥ r2_min) plus one more rule: the curvature must stand
    ``z`` standard errors above zero. At fine-tuning learning rates the term ½η²A can sit below
    the float32 rounding level of the loss; the R² gate alone then accepts a curvature made of
    rounding noise, and b²/A explodes.

    Args:
        fit: the fit to judge.
        r2_min: minimum R².
        z: how many standard errors ``A`` must exceed (default: 3.0).
    """
    if not all(math.isfinite(v) for v in (fit.b, fit.A, fit.r2)):
        return Reason.NON_FINITE
    if abs(fit.A) <= z * fit.se_A:
        return Reason.NOISE
    if fit.A < 0:
        return Reason.CONCAVE
    if fit.b <= 0:
        return Reason.NO_DESCENT
    if fit.r2 < r2_min:
        return Reason.NOT_PARABOLA
    return None


def newton_update(current: float, optimum: float, smoothing: float, max_change: float) -> float:
    """Smoothed, clamped move of a learning rate towards its Newton value (design §4.6).

    ``current ← smoothing · current + (1 − smoothing) · clamp(optimum, current / max_change,
    current · max_change)``.
    """
    clamped = min(max(optimum, current / max_change), current * max_change)
    return smoothing * current + (1.0 - smoothing) * clamped


def per_parameter_influence(b: float, A: float, numel: int) -> float:
    """PPI = b² / (A · n): the best loss reduction of the group per parameter (paper eq. 14)."""
    return b * b / (A * numel)


def best_reduction(b: float, A: float, eta_max: float) -> tuple[float, str]:
    """The best loss reduction along the line within a trust region, and which case it is.

    ``max over 0 < η ≤ eta_max of (η b − ½ η² A)`` (0 as η → 0 when nothing is positive), the
    reduction the quadratic model promises for a step the optimizer would take:

    - ``"interior"``: ``A > 0`` and the Newton step ``0 < b/A ≤ eta_max``: ``b² / (2A)``, the
      paper's value;
    - ``"trust region"``: no interior optimum (``A ≤ 0``: a concave or flat line, or
      ``b/A > eta_max``) and the edge ``η = eta_max`` gains: its value there;
    - ``"no descent"``: no step in the region reduces the loss: 0.

    Args:
        b: slope ``Gᵀd``.
        A: curvature ``dᵀHd``.
        eta_max: the largest step, in the units of ``b`` and ``A`` (``inf``: no region).
    """
    if A > 0.0 and 0.0 < b <= A * eta_max:
        return b * b / (2.0 * A), "interior"
    if math.isinf(eta_max):
        return (math.inf, "trust region") if b > 0.0 or A < 0.0 else (0.0, "no descent")
    edge = eta_max * b - 0.5 * eta_max * eta_max * A
    return (edge, "trust region") if edge > 0.0 else (0.0, "no descent")
