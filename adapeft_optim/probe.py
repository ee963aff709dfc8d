"""One probe step, in the shape of SAM's first_step / second_step: step the inner optimizer once,
move each group along its update direction while the closure evaluates the probe batch, fit, and
put every parameter where the new learning rates say, leaving no other trace.

:class:`Probe` moves parameters; what its losses change is :mod:`.update`'s.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .inner import _lr_value, _world_size
from .options import DEFAULT_SCALES
from .trace import _copy_, _direction, _is_dtensor, _KeepBuffers, _Line, _Reshard, _RNGState
from .update import JOINT_SCALES, STACKLEVEL, _Update, commit, fit_probe, guard, joint_scale

if TYPE_CHECKING:
    from .optimizer import GeNAdaPEFT

# Note [The probe step]
# ~~~~~~~~~~~~~~~~~~~~~
# The inner optimizer steps exactly once per GeNAdaPEFT.step(), probe step or not, so its
# moments and step counters advance as they would without us. On a probe step it steps with
# lr = 1 for every param group; the inner update is linear in lr (w ← w − lr·d: SGD, Adam,
# AdamW, RMSprop, ... but not Adagrad with lr_decay or Adafactor's relative step), so
# d = w_t − w_unit is the update direction per unit lr, recovered to full precision. Then:
#   1. L0 = closure() at w_t, and for each group k and scale s: L = closure() at
#      w_t − s·spacing_k·η_k·d_k (only group k moved), with η_k the group's effective lr;
#   2. fit (b, A) per group, accept or reject, move the Newton lr;
#   3. w ← w_t − η_k(new)·d_k: exactly the inner update at the new lr.
# Every write into a parameter is a copy_ from saved tensors or w_t − c·d from them; never an
# add/sub round trip, so after step() the parameters are exactly the stepped values.

# Note [The joint step]
# ~~~~~~~~~~~~~~~~~~~~~
# Each group's Newton lr is the optimum of its own line with the other groups held still. Taken
# together the groups interact (the cross terms d_jᵀ H d_k), and the sum of per-group optima
# overshoots. So after the per-group fits the step about to be taken, D = Σ_k η_k d_k, is probed
# along its own line at t = ±1 (two forwards) and fitted like a group: when its Newton point
# t* = b/A lies below 1 every probed group's lr is multiplied by max(t*, 1/max_change). Only
# accepted fits (b > 0, A above noise) scale; the check never raises an lr.

# Note [Probe batches]
# ~~~~~~~~~~~~~~~~~~~~
# The slope b = Gᵀd must be measured on data the step has not seen. On the batch whose gradient
# built d, Gᵀd is inflated (d fits that batch's noise): measured 1.0-5.2x per group on real text
# (GPT-2 + LoRA), so b/A comes out several times too large and every probe asks for a larger lr.
# With ``probe_data`` each probe draws the next batch (the iterable is started over when it
# ends), and all forwards of that probe, the joint check's included, evaluate that one batch
# under one replayed RNG state. GeN's reference code does the same with a second iterator. A
# sequence (a list, ProbeBatches) is indexed by the count of batches drawn, which checkpoints
# carry, so a resumed run probes the same batches; any other iterable starts over on resume.

# Note [Slopes from a backward pass]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The stencil spends 2+ forwards per group on b = Gᵀd_k, the line's slope at 0. One forward and
# backward on the probe batch (≈ 2.6 forwards on the benchmark model) gives G, so every group's
# b_k = ⟨G, d_k⟩ comes at once and exactly (no truncation error, no rounding of loss
# differences), and each group needs only the forwards that fit A with b held fixed: the default
# pair (-2, 2), as wide as the paper's stencil, keeps the odd (cubic) term out of A and leaves it
# in the residual, so R² means something; one scale, (1,), would carry it into A. So a probe costs
# a backward and 2K + 2 forwards instead of 4K + 3, fewer once curvatures are reused (Note
# [Curvature reuse] in update.py). The joint check knows its slope too (b_D = Σ_k η_k b_k) and
# probes one point, t = 1. The gradient is taken with torch.autograd.grad, into no parameter's
# .grad. It runs in one process only ("auto"): under DDP or FSDP2 a backward outside the training
# step would fire the engine's gradient hooks, and reentrant activation checkpointing refuses
# autograd.grad; "auto" then probes with the stencil.

NO_BATCH = object()  # the closure takes no argument (no probe_data)


class Probe:
    """One probe step of ``opt`` (Note [The probe step]), in the order :meth:`run` takes it:

    1. :meth:`step_inner`: save w_t, step the inner optimizer once (at lr 1, or at the user's
       lrs with ``adapt_lr=False``) and read each param group's direction d off that step;
    2. :meth:`losses_at`: put the groups at points of the line w_t − c·d and evaluate the closure
       there, under one replayed RNG state, with buffers and FSDP2 shards put back;
    3. fit and commit the outcome (:mod:`.update`);
    4. :meth:`finish`: every parameter at w_t − lr_new·d (or the inner step itself, bit for bit).
    """

    def __init__(self, opt: GeNAdaPEFT, closure: Callable[..., Any], batch: Any) -> None:
        self.opt, self.closure, self.batch = opt, closure, batch
        self.groups = opt.param_groups
        self.stepped = [[p for p in g["params"] if p.grad is not None] for g in self.groups]
        self.every = [p for g in self.groups for p in g["params"]]
        self.old_lrs = opt._effective_lrs()
        self.unit = opt.adapt_lr  # influence only: the inner step at the user's lrs is the step
        self.rng = _RNGState()
        self.reshard = _Reshard()
        self.scales: tuple[float, ...] = ()  # the probe points, set by measure() for its mode
        self.unit_slopes: list[float] | None = None  # ⟨G, d⟩ per param group, with a backward slope

    def step_inner(self) -> None:
        origin = [[p.detach().clone() for p in ps] for ps in self.stepped]  # w_t
        try:
            self.opt._inner_step([1.0] * len(self.groups) if self.unit else self.old_lrs)
        except BaseException:
            for ps, saved in zip(self.stepped, origin):
                if ps:
                    _copy_(ps, saved)
            raise
        self.final = None if self.unit else [[p.detach().clone() for p in ps] for ps in self.stepped]
        dirs = [
            _direction(saved, [p.detach() for p in ps], None if self.unit else lr)
            for ps, saved, lr in zip(self.stepped, origin, self.old_lrs)
        ]
        self.line = _Line(self.stepped, origin, dirs)

    def moving(self) -> list[str]:
        """The active groups the inner step moved (those with a gradient)."""
        opt = self.opt
        return [
            n
            for n in opt.names
            if opt._active(n) and any(ps for g, ps in zip(self.groups, self.stepped) if g["adapeft_name"] == n)
        ]

    def points(self, names: Sequence[str]) -> list[list[float]]:
        """L0's point, then ``len(scales)`` points per group in ``names``: coefficients c per param
        group, the line's w_t − c·d."""
        points = [[0.0] * len(self.groups)]
        for name in names:
            spacing = self.opt._stats[name]["spacing"]
            points += [
                [s * spacing * lr if g["adapeft_name"] == name else 0.0 for g, lr in zip(self.groups, self.old_lrs)]
                for s in self.scales
            ]
        return points

    def losses_at(self, coefficients: Iterable[Sequence[float]]) -> tuple[np.ndarray, list[torch.Tensor]]:
        """The closure's losses at each point: averaged over ranks (float64), and as returned."""
        out = []
        for coeffs in coefficients:
            self.line.move(coeffs)
            out.append(self.loss())
            self.reshard.after_forward()
        if not out:
            return np.zeros(0), out
        return reduce_losses(torch.stack([v.to(torch.float64) for v in out])), out

    def loss(self) -> torch.Tensor:
        """The closure's loss at the parameters as they are, under the probe's RNG state."""
        return _scalar(self.call()).detach().reshape(())

    def call(self) -> Any:
        """Run the closure on the probe batch under the probe's RNG state; it must not backward."""
        # No parameter has a .grad during the probe (the gradients are set aside): one that gets
        # one was reached by a backward() in the closure.
        self.rng.restore()
        try:
            out = self.closure() if self.batch is NO_BATCH else self.closure(self.batch)
        except RuntimeError as err:
            if "does not require grad" in str(err):
                raise RuntimeError(
                    "the closure called backward(): a GeNAdaPEFT closure only computes the loss by a forward "
                    "pass (return model(**batch).loss); backward() belongs to the training loop"
                ) from err
            raise
        if any(p.grad is not None for p in self.every):
            raise RuntimeError(
                "the closure changed the gradients (called backward()?): a GeNAdaPEFT closure only computes "
                "the loss by a forward pass; backward() belongs to the training loop"
            )
        return out

    def mode(self) -> str:
        """The slope mode of this probe (Note [Slopes from a backward pass])."""
        slope = self.opt.slope
        if slope != "auto":
            return slope
        distributed = _world_size() > 1 or any(_is_dtensor(p) for p in self.every)
        return "stencil" if distributed else "backward"

    def slopes(self) -> torch.Tensor | None:
        """L0 with a backward pass at w_t: each param group's ⟨G, d⟩ (per unit lr) into
        ``self.unit_slopes``. ``None`` when the closure's loss has no graph or the model refuses
        ``autograd.grad`` (reentrant checkpointing) and the mode is "auto"."""
        flat = [p for ps in self.stepped for p in ps if p.requires_grad]
        if not flat:  # nothing moved: no slope to measure
            self.unit_slopes = [0.0] * len(self.stepped)
            return self.loss()
        with torch.enable_grad():
            out = self.call()
            loss = _scalar(out)
            why = None if loss.requires_grad else "the closure's loss has no autograd graph (computed under no_grad?)"
            if why is None:
                try:
                    grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
                except RuntimeError as err:
                    if "checkpoint" not in str(err):
                        raise
                    why = f"the model refuses a second backward ({err})"
        if why is not None:
            if self.opt.slope == "backward":
                raise RuntimeError(
                    f"slope='backward' needs a backward pass on the probe batch, but {why}; use slope='stencil' "
                    "(or non-reentrant checkpointing: gradient_checkpointing_kwargs={'use_reentrant': False})"
                )
            return None
        totals = []  # summed on the parameters' device: one host sync per param group, not per tensor
        for ps, dirs in zip(self.stepped, self.line.dirs):
            total = 0.0
            for p, d in zip(ps, dirs):
                g = next(grads) if p.requires_grad else None
                if g is not None:
                    total = total + _dot(g, d)
            totals.append(total)
        self.unit_slopes = [float(t) for t in totals]
        return loss.detach().reshape(())

    def run(self) -> torch.Tensor:
        """The whole probe step; returns L0, the loss at the pre-step weights on the probe batch."""
        opt = self.opt
        self.step_inner()
        # The inner optimizer has stepped: the step counts even if a probe forward fails.
        step = opt._step
        opt._step += 1
        moving = self.moving()
        names = [n for n in moving if opt._stats[n]["due"] <= step // opt.lazy]  # Note [Settled groups]
        # The training gradients are set aside while the closure runs, so a closure that calls
        # backward() (under enable_grad) cannot change them; they are put back whatever happens.
        set_aside = [p.grad for p in self.every]
        for p in self.every:
            p.grad = None
        done = False
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(_KeepBuffers())
                stack.enter_context(self.reshard)
                values, losses = self.measure(names)
                slopes = self.group_slopes(moving)
                update = fit_probe(opt, step, names, values, losses[0].dtype, self.scales, slopes)
                if opt.adapt_lr:
                    guard(opt, update, moving)
                    if opt.joint_check and moving and math.isfinite(update.L0):
                        self.check_joint(update, moving)
                commit(opt, update)
            done = True
        finally:
            for p, g in zip(self.every, set_aside):
                p.grad = g
            self.rng.restore()
            self.finish(done)
        return losses[0]

    def measure(self, names: Sequence[str]) -> tuple[np.ndarray, list[torch.Tensor]]:
        """L0 and each group's losses at its points (Note [Slopes from a backward pass])."""
        mode = self.mode()
        self.scales = self.opt.scales or DEFAULT_SCALES[mode]
        points = self.points(names)
        if mode == "backward":
            self.line.move(points[0])
            L0 = self.slopes()
            self.reshard.after_forward()
            if L0 is not None:
                values, losses = self.losses_at(points[1:])
                return np.concatenate([reduce_losses(L0.to(torch.float64)[None]), values]), [L0, *losses]
            self.opt.slope = "stencil"  # "auto" with a loss it cannot differentiate: for good
            warnings.warn(
                "GeNAdaPEFT(slope='auto'): no backward pass on the probe batch is possible (reentrant "
                "checkpointing, or a closure under no_grad); probing with the stencil from now on",
                RuntimeWarning,
                stacklevel=STACKLEVEL,
            )
            self.scales = self.opt.scales or DEFAULT_SCALES["stencil"]
            points = self.points(names)
        return self.losses_at(points)

    def group_slopes(self, names: Sequence[str]) -> dict[str, float] | None:
        """b of each named group per unit of its effective lr, from the backward pass; or None."""
        if self.unit_slopes is None:
            return None
        out = dict.fromkeys(names, 0.0)
        for g, lr, b in zip(self.groups, self.old_lrs, self.unit_slopes):
            if g["adapeft_name"] in out:
                out[g["adapeft_name"]] += lr * b
        return out

    def check_joint(self, update: _Update, moving: list[str]) -> None:
        """Note [The joint step]: probe the step about to be taken, all groups together; with a
        backward slope b_D = Σ η_k ⟨G, d_k⟩ is known and one point, t = 1, gives the curvature."""
        new_lrs = [update.factors[g["adapeft_name"]] * _lr_value(g) for g in self.groups]
        if self.unit_slopes is None:
            ts, slope = JOINT_SCALES, None
        else:
            ts, slope = (1.0,), sum(lr * b for lr, b in zip(new_lrs, self.unit_slopes))
        joint, _ = self.losses_at([[t * lr for lr in new_lrs] for t in ts])
        update.apply_joint(joint_scale(self.opt, update.L0, ts, joint, update.noise, slope), moving)

    def finish(self, done: bool) -> None:
        """Parameters at the new lrs' step (``done``), else at the step the old lrs take."""
        if self.unit:
            self.line.move(self.opt._effective_lrs() if done else self.old_lrs)
        else:
            for ps, saved in zip(self.stepped, self.final):
                if ps:
                    _copy_(ps, saved)


def _dot(g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """⟨g, d⟩ summed in float64 (products in float32 at least: bf16 ones would round)."""
    dtype = torch.promote_types(g.dtype, torch.float32)
    return (g.to(dtype) * d.to(dtype)).sum(dtype=torch.float64)


def _scalar(out: Any) -> torch.Tensor:
    """The closure's output as a 0-d tensor (a float becomes a float32 tensor), or a TypeError."""
    if torch.is_tensor(out):
        if out.numel() != 1:
            raise TypeError(
                f"the closure returned a tensor of shape {tuple(out.shape)}; it must return the scalar loss "
                "(e.g. reduce with .mean())"
            )
        return out.reshape(())
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        return torch.tensor(float(out), dtype=torch.float32)
    raise TypeError(f"the closure returned {type(out).__name__}; it must return the loss as a scalar tensor or float")


def reduce_losses(losses: torch.Tensor) -> np.ndarray:
    """Mean of the probe losses over ranks, so every rank fits the same numbers (§4.9)."""
    dist = torch.distributed
    if _world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        buf = losses.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        losses = buf / dist.get_world_size()
    return losses.cpu().numpy()


def next_probe_batch(opt: GeNAdaPEFT) -> Any:
    """The next batch of ``probe_data``, starting it over when it ends (Note [Probe batches])."""
    count, opt._probe_count = opt._probe_count, opt._probe_count + 1
    if isinstance(opt.probe_data, Sequence):  # by index: a resumed run draws the same batch
        if not len(opt.probe_data):
            raise RuntimeError("probe_data is empty; give it at least one batch")
        return opt.probe_data[count % len(opt.probe_data)]
    if opt._probe_iter is None:
        opt._probe_iter = iter(opt.probe_data)
    try:
        return next(opt._probe_iter)
    except StopIteration:
        opt._probe_iter = iter(opt.probe_data)
    try:
        return next(opt._probe_iter)
    except StopIteration:
        raise RuntimeError(
            "probe_data yielded no batch: pass a re-iterable of batches (a list, a DataLoader), not an "
            "empty or exhausted iterator; for an endless stream use itertools.cycle"
        ) from None


# -- checkpoints ----------------------------------------------------------------------------
# state_dict() is torch's own: the wrapper's values are in the param groups it saves.
