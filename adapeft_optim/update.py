"""What one probe's losses change: fits per group, the Newton lr and spacing each proposes, the
influence it adds, the divergence guard and the joint scale, gathered in an :class:`_Update` and
committed at once (stats in the param groups, records in the history).

The functions take the optimizer (a :class:`~adapeft_optim.optimizer.GeNAdaPEFT`) for its
settings and state; none of them moves a parameter (that is :mod:`.probe`'s job).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch

from .fit import QuadraticFit, Reason, best_reduction, check_fit, fit_curvature, fit_quadratic, newton_update
from .inner import _lr_value

if TYPE_CHECKING:
    from .optimizer import GeNAdaPEFT

# Note [Curvature below the noise]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A float32 loss is only known to ~1e-7 relative. At lr 1e-5 the curvature term ½η²A can be
# below that, and a fit then returns a "curvature" made of rounding (APPI jumps by orders of
# magnitude). The fit's standard errors use max(residual sigma, loss_rtol·|L|), and a fit is
# rejected unless |A| > z·se(A). A group rejected for that reason probes wider next time (its
# ``spacing``, up to ``max_spacing``): the signal grows with spacing², so the factor aims at
# A/se(A) ≈ 30 (between 2× and 32× at once); a fit rejected for a low R² (probes too far for a
# parabola) or accepted with A/se(A) > 200 narrows it back (÷4 and ÷2, not below 1). The
# spacing only moves the probe points; the learning rate follows the fit.


# Adaptive probe spacing (Note [Curvature below the noise]): widen towards a curvature this many
# standard errors above zero; narrow by 2 only when even a quarter of the signal would pass.
_TARGET_SNR = 30.0
_NARROW_SNR = 200.0


def _loss_rtol(dtype: torch.dtype) -> float:
    # A few ulps of the loss: summing thousands of per-token terms in float32 gives ~1e-7 relative
    # jitter under tiny weight changes; 8 eps is a conservative rounding level.
    return 8.0 * torch.finfo(dtype).eps


# Note [Influence of every probe]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# APPI sums, per probe, 2/n times the best loss reduction the fitted line promises. Where the
# fit is accepted (A above noise) that is the paper's b²/A. Where the line has no interior
# optimum (A ≤ 0, a real concave line, or A within noise) it is max over 0 < η ≤ max_change·lr of
# (ηb − ½η²A): the most a step the optimizer would take can gain. A probe with b ≤ 0 is worth 0.
# So every probe with a finite, parabola-shaped line is valued (record "case": "interior",
# "trust region" or "no descent"); leaving out the concave ones would bias APPI towards groups
# whose lines happen to be convex. Only non-finite losses and R² below r2_min are not valued.

# Note [Divergence guard]
# ~~~~~~~~~~~~~~~~~~~~~~~
# The probe losses L0 of the last _GUARD_WINDOW probes are kept. When L0 turns non-finite, or jumps
# more than _GUARD_SD robust standard deviations (1.4826 · median absolute deviation) above their
# median (after _GUARD_WARMUP probes: batch-to-batch noise and a falling loss widen the band, so
# only a real jump passes), every moving group's lr is divided by max_change (from the lower of its
# old and proposed value) and probed again at the next probe step and a warning names the groups:
# lrs shrink, never freeze at exploded values (a non-finite loss rejects every fit, and without the
# guard nothing would move them).

JOINT_SCALES = (-1.0, 1.0)  # the joint check's points (Note [The joint step] in probe.py), around L0
STACKLEVEL = 4  # the guard's warning points at the caller of opt.step(): guard <- Probe.run <- step
_GUARD_SD = 6.0
_GUARD_WARMUP = 6
_GUARD_WINDOW = 16
_SETTLED_MOVE = 0.05
_STABLE_CURVATURE = 0.5  # Note [Curvature reuse]

# Note [Curvature reuse]
# ~~~~~~~~~~~~~~~~~~~~~~
# With a backward slope (Note [Slopes from a backward pass] in probe.py) every group's b is fresh
# at every probe step at no cost; only the curvature costs forwards. A group whose curvature A
# (per unit lr²) is stable, an accepted fit within _STABLE_CURVATURE (50%) of the A it measured
# before, is measured again after 2, then 4, ... probe steps (up to max_interval), and in between
# its lr and PPI use the fresh b with the kept A (record "reused"): every group gets a record,
# weight 1, at every probe step. Any other outcome (a first fit, A moving by more, a rejected fit,
# the divergence guard) measures it again at the next probe step. Reusing an A that still moves
# would bias APPI: on the demo's warm-up A falls 1.5-2x per probe step as the task is learnt, and
# lora_A's rises while lora_B grows from zero (reusing every accepted A there moved lora_A from
# 4th to 2nd in APPI; with this rule the ranking and APPI are those of measuring every probe).
# With the stencil a skipped group learns nothing, so only settled groups skip (Note [Settled
# groups]).

# Note [Settled groups]
# ~~~~~~~~~~~~~~~~~~~~~
# A group's probe costs len(scales) forwards, and most of a run's probes confirm what the last one
# said. A group is settled when its fit is accepted and the Newton update it proposes moves the lr
# by at most _SETTLED_MOVE (5%: b/A within ~1.5x of the step in use at the default smoothing, or the
# lr pinned at max_lr_factor); each settled probe doubles the number of probe steps until its next
# probe, up to max_interval; a non-positive slope (no lr information) keeps the interval, and any
# other outcome (rejected, a larger move, the divergence guard) probes it at the next probe step. A
# probe stands for the probe steps of its interval: its PPI enters APPI with that weight (record
# "weight"), so APPI still sums one PPI per probe step. Which groups are due depends on the fits
# alone, which every rank computes from the same reduced losses, so ranks always probe the same
# groups. The joint check and the guard cover every moving group.


class ProbeRecord(TypedDict):
    """One group's outcome of one probe, as kept in ``opt.history`` (a plain dict: JSON- and
    pickle-friendly). b and A are per unit lr (d = update / lr), as the math writes them."""

    step: int  # the optimizer step the probe ran at
    group: str
    b: float  # slope of the loss along −d on the probe batch
    A: float  # curvature along d
    r2: float  # of the quadratic fit
    ppi: float  # this probe's influence per parameter (Note [Influence of every probe])
    weight: int  # probe steps this probe stands for (Note [Settled groups]); APPI += weight · ppi
    case: str | None  # "interior", "trust region", "no descent"; None: not valued
    accepted: bool  # the fit passed every test and moved the Newton lr
    reason: Reason | None  # why it was rejected
    reused: bool  # b fresh, A from the group's last accepted fit (Note [Curvature reuse])
    spacing: float  # probe points, in units of the group's lr
    snr: float  # A / se(A)
    newton_lr: float  # after this probe, in the units of the lr it was wrapped with
    lr: float  # effective lr after this probe
    joint_scale: float  # the joint check's factor on every lr (Note [The joint step] in probe.py)
    joint_t: float  # the joint line's Newton point t*
    guard: bool  # the divergence guard fired


@dataclass
class _Update:
    """Everything one probe changes, built first and committed at once."""

    step: int
    L0: float
    noise: float  # the loss's rounding level at L0
    factors: dict[str, float]
    spacings: dict[str, float] = field(default_factory=dict)
    ppi: dict[str, float] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent_l0: list[float] | None = None
    guarded: bool = False
    joint_scale: float = 1.0
    joint_t: float = math.nan
    intervals: dict[str, int] = field(default_factory=dict)  # Note [Settled groups]
    curvatures: dict[str, float] = field(default_factory=dict)  # Note [Curvature reuse]
    backward: bool = False  # slopes from a backward pass (Note [Slopes from a backward pass])

    def schedule(self, name: str, interval: int) -> None:
        self.intervals[name] = interval

    def apply_joint(self, result: tuple[float, float], names: Sequence[str]) -> None:
        self.joint_scale, self.joint_t = result
        for name in names:
            self.factors[name] *= self.joint_scale


def fit_probe(
    opt: GeNAdaPEFT,
    step: int,
    names: list[str],
    values: np.ndarray,
    loss_dtype: torch.dtype,
    scales: Sequence[float],
    slopes: dict[str, float] | None = None,
) -> _Update:
    """Fit every probed group (``names``, in the order of ``values``: L0, then each group's
    ``len(scales)`` points) and propose its new lr factor and spacing; nothing is committed.
    ``slopes``: every moving group's b per unit of its effective lr from a backward pass (then only
    A is fitted, and a group not in ``names`` reuses its last accepted A), or None (the stencil)."""
    L0 = float(values[0])
    rtol = opt.loss_rtol if opt.loss_rtol is not None else _loss_rtol(loss_dtype)
    stats = opt._stats
    noise = rtol * abs(L0) if math.isfinite(L0) else 0.0
    update = _Update(step, L0, noise, {n: s["factor"] for n, s in stats.items()}, backward=slopes is not None)
    k = len(scales)
    at = {name: 1 + i * k for i, name in enumerate(names)}  # where each measured group's losses start
    for name in names if slopes is None else slopes:  # in group order
        if name in at:
            Ls = values[at[name] : at[name] + k]
            _fit_group(
                opt, update, name, _line_fit(update.L0, Ls, scales, opt._stats[name]["spacing"], rtol, slopes, name)
            )
        elif opt._stats[name]["curvature"] > 0.0:  # Note [Curvature reuse]
            _fit_group(opt, update, name, _reused_fit(opt, name, slopes[name]), reused=True)
    return update


def _stable(kept: float, measured: float) -> bool:
    """Note [Curvature reuse]: the measured curvature is within _STABLE_CURVATURE of the kept one."""
    return kept > 0.0 and abs(measured / kept - 1.0) <= _STABLE_CURVATURE  # False for NaN


def _reused_fit(opt: GeNAdaPEFT, name: str, b: float) -> QuadraticFit:
    """The fresh slope with the curvature of the group's last accepted fit, in effective-lr units."""
    st = opt._stats[name]
    lr_ref = st["factor"] * _lr_value(opt._groups_of(name)[0])
    return QuadraticFit(b=b, A=st["curvature"] * lr_ref**2, r2=1.0, se_b=0.0, se_A=0.0)


def _line_fit(
    L0: float, Ls: np.ndarray, scales: Sequence[float], spacing: float, rtol: float, slopes: dict | None, name: str
) -> QuadraticFit:
    """The group's line, in units of its effective lr: (b, A) from the stencil, or A with b known."""
    ts = [s * spacing for s in scales]
    noise = rtol * float(np.max(np.abs(np.append(Ls, L0)))) if np.all(np.isfinite(Ls)) else 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf: a NaN fit, rejected
        if slopes is None:
            return fit_quadratic(ts, Ls - L0, noise=noise)
        return fit_curvature(ts, Ls - L0, slopes[name], noise=noise)


def _fit_group(opt: GeNAdaPEFT, update: _Update, name: str, fit: QuadraticFit, reused: bool = False) -> None:
    st = opt._stats[name]
    spacing, interval, numel = st["spacing"], st["interval"], opt.numel[name]
    backward = update.backward
    reason = check_fit(fit, opt.r2_min, opt.z) if math.isfinite(update.L0) else Reason.NON_FINITE
    first = opt._groups_of(name)[0]
    lr_ref = st["factor"] * _lr_value(first)
    ppi, case = influence(opt, fit, reason, numel)
    settled = False
    if reason is None:
        # The Newton lr lives in base-lr units and moves towards η* = b/A; the schedule's factor
        # lr/base_lr multiplies it afterwards (§4.2), so a decaying schedule decays the Newton lr
        # instead of being undone by it. b/A is in units of the current effective step, i.e. of
        # factor · schedule.
        target = st["factor"] * (_lr_value(first) / first["adapeft_base_lr"]) * fit.b / fit.A
        proposed = min(newton_update(st["factor"], target, opt.smoothing, opt.max_change), opt.max_lr_factor)
        settled = abs(proposed / st["factor"] - 1.0) <= _SETTLED_MOVE  # Note [Settled groups]
        if opt.adapt_lr:
            update.factors[name] = proposed
    update.spacings[name] = spacing if reused else _next_spacing(fit, reason, spacing, opt.max_spacing)
    weight = 1 if backward else interval  # with the stencil a probe stands for its interval
    curvature = fit.A / lr_ref**2 if lr_ref else math.nan  # per unit lr²
    # The next measurement: later when earned (Note [Curvature reuse] / [Settled groups]); a reused
    # curvature leaves the schedule as it stands.
    earned = reason is None and _stable(st["curvature"], curvature) if backward else settled
    if earned and not reused:
        update.schedule(name, min(2 * interval, opt.max_interval))
    elif not reused:  # a descent-free line says nothing of the lr: the interval stays
        update.schedule(name, interval if reason == Reason.NO_DESCENT else 1)
    if not reused and reason is None and lr_ref:
        update.curvatures[name] = curvature
    update.ppi[name] = ppi * weight
    update.records[name] = {
        "step": update.step,
        "group": name,
        "b": fit.b / lr_ref if lr_ref else math.nan,
        "A": fit.A / lr_ref**2 if lr_ref else math.nan,
        "r2": fit.r2,
        "ppi": ppi,
        "weight": weight,
        "case": case,
        "accepted": reason is None,
        "reason": reason,
        "reused": reused,
        "spacing": spacing,
        "snr": fit.A / fit.se_A if fit.se_A > 0 else (math.inf if fit.A > 0 else 0.0),
    }


def _next_spacing(fit: QuadraticFit, reason: Reason | None, spacing: float, max_spacing: float) -> float:
    """Note [Curvature below the noise]: where the group's next probe points go."""
    if reason is None:
        return max(spacing / 2.0, 1.0) if fit.A > _NARROW_SNR * fit.se_A else spacing
    if reason == Reason.NOISE:
        # The curvature signal grows with spacing², so aim for _TARGET_SNR in one move.
        snr = abs(fit.A) / fit.se_A if fit.se_A > 0 else 0.0
        grow = min(max(math.sqrt(_TARGET_SNR / max(snr, 1e-6)), 2.0), 32.0)
        return min(spacing * grow, max_spacing)
    if reason == Reason.NOT_PARABOLA:
        return max(spacing / 4.0, 1.0)
    return spacing


def influence(opt: GeNAdaPEFT, fit: QuadraticFit, reason: Reason | None, numel: int) -> tuple[float, str | None]:
    """PPI of one probe and its case (Note [Influence of every probe]); ``(0.0, None)`` when the
    probe cannot be valued (non-finite loss, or a line a parabola does not describe)."""
    if reason in (Reason.NON_FINITE, Reason.NOT_PARABOLA):
        return 0.0, None
    # An accepted curvature has an optimum: the paper's b²/A wherever it lies. Otherwise (A not
    # above zero, or within noise) the best reduction within max_change lr of a step.
    eta_max = math.inf if reason is None else opt.max_change
    reduction, case = best_reduction(fit.b, fit.A, eta_max)
    return 2.0 * reduction / numel, case


def guard(opt: GeNAdaPEFT, update: _Update, names: list[str]) -> None:
    """Note [Divergence guard]: shrink every moving group's lr when the probe loss jumps."""
    L0, recent = update.L0, opt._recent_l0
    why = None
    if not math.isfinite(L0):
        why = f"the probe loss is {L0}"
    elif len(recent) >= _GUARD_WARMUP:
        median = float(np.median(recent))
        spread = 1.4826 * float(np.median(np.abs(np.asarray(recent) - median)))  # robust sd
        if L0 > median + _GUARD_SD * spread + update.noise:
            why = (
                f"the probe loss {L0:.6g} jumped above the median {median:.6g} of the last "
                f"{len(recent)} probes by more than {_GUARD_SD:g} robust sd ({spread:.3g})"
            )
    if math.isfinite(L0):
        update.recent_l0 = (list(recent) + [L0])[-_GUARD_WINDOW:]
    if why is None or not names:
        return
    for name in names:
        update.factors[name] = min(update.factors[name], opt._stats[name]["factor"]) / opt.max_change
        update.schedule(name, 1)
    update.guarded = True
    lrs = ", ".join(f"{n}: {opt.lrs[n]:.3g}" for n in names)
    warnings.warn(
        f"GeNAdaPEFT step {update.step}: {why}; dividing the lr of every probed group by "
        f"max_change={opt.max_change:g} ({lrs}). Lower the starting lr or max_lr_factor if this repeats",
        RuntimeWarning,
        stacklevel=STACKLEVEL,
    )


def joint_scale(
    opt: GeNAdaPEFT, L0: float, ts: Sequence[float], values: np.ndarray, noise: float, slope: float | None = None
) -> tuple[float, float]:
    """(scale, t*) from the joint line: t* = b/A of L(w − t·Σ η_k d_k), scale = clamp(t*, 1/max_change, 1).
    ``slope``: the line's b from a backward pass (only A is fitted), or None."""
    if slope is None:
        fit = fit_quadratic(ts, values - L0, noise=noise)
    else:
        fit = fit_curvature(ts, values - L0, slope, noise=noise)
    if check_fit(fit, 0.0, opt.z) is not None:
        return 1.0, math.nan
    t_star = fit.b / fit.A
    return min(max(t_star, 1.0 / opt.max_change), 1.0), t_star


def commit(opt: GeNAdaPEFT, update: _Update) -> None:
    """Apply a probe's outcome to every group at once (stats, history)."""
    stats = opt._stats
    for name, record in update.records.items():
        st = stats[name]
        st["probes"] += 1
        st["accepted"] += record["accepted"]
        if record["case"] is not None:
            st["valued"] += 1
            st["appi"] += update.ppi[name]
        st["spacing"] = update.spacings[name]
    for name, factor in update.factors.items():
        stats[name]["factor"] = factor
    for name, interval in update.intervals.items():
        stats[name].update(interval=interval, due=update.step // opt.lazy + interval)
    for name, curvature in update.curvatures.items():
        stats[name]["curvature"] = curvature
    if update.recent_l0 is not None:
        opt._recent_l0 = tuple(update.recent_l0)
    lrs = opt.lrs
    for name, partial in update.records.items():
        record: ProbeRecord = {
            **partial,
            "newton_lr": stats[name]["factor"] * opt._groups_of(name)[0]["adapeft_base_lr"],
            "lr": lrs[name],
            "joint_scale": update.joint_scale,
            "joint_t": update.joint_t,
            "guard": update.guarded,
        }
        opt.history.append(record)
    if len(opt.history) > opt.history_size:
        del opt.history[: len(opt.history) - opt.history_size]
