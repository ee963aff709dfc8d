"""One probe step, in the shape of SAM's first_step / second_step: step the inner optimizer once,
move each group along its update direction while the closure evaluates the probe batch, fit, and
put every parameter where the new learning rates say, leaving no other trace.

:class:`Probe` moves parameters; what its losses change is :mod:`.update`'s.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .inner import _lr_value, _world_size
from .trace import _copy_, _direction, _KeepBuffers, _Line, _Reshard, _RNGState
from .update import JOINT_SCALES, _Update, commit, fit_probe, guard, joint_scale

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
                for s in self.opt.scales
            ]
        return points

    def losses_at(self, coefficients: Iterable[Sequence[float]]) -> tuple[np.ndarray, list[torch.Tensor]]:
        """The closure's losses at each point: averaged over ranks (float64), and as returned."""
        out = []
        for coeffs in coefficients:
            self.line.move(coeffs)
            out.append(self.loss())
            self.reshard.after_forward()
        return reduce_losses(torch.stack([v.to(torch.float64) for v in out])), out

    def loss(self) -> torch.Tensor:
        """The closure's loss at the parameters as they are, under the probe's RNG state."""
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
        if torch.is_tensor(out):
            if out.numel() != 1:
                raise TypeError(
                    f"the closure returned a tensor of shape {tuple(out.shape)}; it must return the scalar loss "
                    "(e.g. reduce with .mean())"
                )
            return out.detach().reshape(())
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            return torch.tensor(float(out), dtype=torch.float32)
        raise TypeError(
            f"the closure returned {type(out).__name__}; it must return the loss as a scalar tensor or float"
        )

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
                values, losses = self.losses_at(self.points(names))
                update = fit_probe(opt, step, names, values, losses[0].dtype)
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

    def check_joint(self, update: _Update, moving: list[str]) -> None:
        """Note [The joint step]: probe the step about to be taken, all groups together."""
        new_lrs = [update.factors[g["adapeft_name"]] * _lr_value(g) for g in self.groups]
        joint, _ = self.losses_at([[t * lr for lr in new_lrs] for t in JOINT_SCALES])
        update.apply_joint(joint_scale(self.opt, update.L0, joint, update.noise), moving)

    def finish(self, done: bool) -> None:
        """Parameters at the new lrs' step (``done``), else at the step the old lrs take."""
        if self.unit:
            self.line.move(self.opt._effective_lrs() if done else self.old_lrs)
        else:
            for ps, saved in zip(self.stepped, self.final):
                if ps:
                    _copy_(ps, saved)


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
