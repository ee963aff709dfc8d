"""The HF ``Trainer`` callback (imports transformers)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..masking import SwitchPolicy, check_method
from ..optimizer import GeNAdaPEFT
from .closures import _LOG_PREFIX, BatchLoss, ProbeBatches, ReplayClosure
from .factory import _distributed_world_size, unwrap_optimizer


def _check_mask_at(mask_at: Any) -> float | None:
    if mask_at is None:
        return None
    if isinstance(mask_at, bool) or not isinstance(mask_at, (int, float)):
        raise TypeError(f"mask_at must be an int (optimizer steps) or a float (fraction of training), got {mask_at!r}")
    if isinstance(mask_at, int):
        if mask_at < 1:
            raise ValueError(f"Invalid mask_at: {mask_at}; use a step >= 1 or a fraction in (0, 1]")
    elif not (0.0 < mask_at <= 1.0):
        raise ValueError(f"Invalid mask_at: {mask_at}; a float is a fraction of training in (0, 1], an int a step")
    return mask_at


class GeNAdaPEFTCallback(TrainerCallback):
    """Logs GeNAdaPEFT's per-group learning rates and APPI and can switch it to masked mode.

    On every Trainer log it adds ``adapeft/lr/<group>`` (the effective learning rate now,
    after the scheduler's step: Newton lr × scheduled lr / base lr, design §4.2) and
    ``adapeft/appi/<group>`` for every group to the logged dict and to the matching
    ``trainer.state.log_history`` entry (saved in ``trainer_state.json``). Trainer places
    ``report_to`` integrations before user callbacks, so for them (wandb, tensorboard, ...)
    to receive the values register the callback with :meth:`attach` instead of
    ``callbacks=[...]``.

    Probes: at the start of training, an optimizer without ``probe_data`` whose closure is
    None or a :func:`replay_closure` gets ``probe_data=ProbeBatches(...)`` over
    ``probe_dataset`` (default: the training dataset, with its own shuffling, the Trainer's
    collator and batch size, a seed per rank) and ``closure=BatchLoss(model)``, so probes
    evaluate batches the step has not seen. An optimizer given its own ``probe_data`` is
    left as it is.

    With ``mask_at`` and ``budget`` it calls ``opt.mask(opt.select(budget, method))`` at the
    end of optimizer step ``mask_at`` (an int), or after the fraction ``mask_at`` (a float)
    of ``state.max_steps``. If no probe has been accepted by then, the switch waits (with a
    warning) for the first step after one is. Under DDP masked mode needs
    ``GeNAdaPEFT(..., freeze=False)`` (checked at the start of training).

    The optimizer is found in the callback's ``optimizer`` argument (unwrapping accelerate's
    ``AcceleratedOptimizer``) unless given here. Probes happen in ``opt.step()``, which
    Trainer calls once per optimizer step (not per micro-batch) under gradient accumulation.

    Args:
        optimizer: the GeNAdaPEFT (or a wrapper of it) (default: None, the Trainer's).
        mask_at (int or float): optimizer step, or fraction of training in (0, 1], at which
            to switch to masked mode (default: None, never).
        budget (float): fraction of parameters to keep training; required with ``mask_at``
            (default: None).
        method (str): ``"greedy"`` or ``"exact"`` (default: ``"greedy"``).
        probe_dataset: the dataset probe batches are drawn from, e.g. a held-out split
            (default: None, the training dataset).

    Attributes:
        masked_at (int | None): the Trainer global step at which this callback switched.
    """

    def __init__(
        self,
        optimizer: Any = None,
        *,
        mask_at: float | None = None,
        budget: float | None = None,
        method: str = "greedy",
        probe_dataset: Any = None,
    ) -> None:
        self.mask_at = _check_mask_at(mask_at)
        self.probe_dataset = probe_dataset
        if (mask_at is None) != (budget is None):
            raise ValueError(
                f"mask_at={mask_at!r} and budget={budget!r}: give both (switch to masked mode at mask_at "
                "keeping the fraction budget of parameters) or neither"
            )
        # The switch rule the optimizer's automatic switch uses too (validates budget and method).
        self.policy = SwitchPolicy(budget, method, at=mask_at) if budget is not None else None
        check_method(method)
        self.budget = budget
        self.method = method
        self._opt: GeNAdaPEFT | None = unwrap_optimizer(optimizer) if optimizer is not None else None
        self._mask_step: int | None = None
        self.masked_at: int | None = None

    def attach(self, trainer: Any) -> GeNAdaPEFTCallback:
        """Register this callback first in ``trainer``'s callbacks, ahead of the ``report_to``
        integrations, so they log the values it adds. Returns the callback."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [self] + [cb for cb in callbacks if cb is not self]
        return self

    def _optimizer(self, optimizer: Any) -> GeNAdaPEFT | None:
        if self._opt is None and optimizer is not None:
            self._opt = unwrap_optimizer(optimizer)
        return self._opt

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = self._optimizer(optimizer)
        if opt is None:
            raise TypeError(
                "GeNAdaPEFTCallback found no optimizer; pass GeNAdaPEFTCallback(optimizer=opt) or give the "
                "Trainer optimizers=(GeNAdaPEFT(...), None)"
            )
        switches = self.mask_at is not None or opt.budget is not None
        if switches and opt.freeze and _distributed_world_size() > 1:
            raise ValueError(
                "masked mode under distributed training needs GeNAdaPEFT(..., freeze=False): with freeze=True "
                "the unselected parameters stop getting gradients and DDP's reducer, built for all of them, "
                "fails with 'Expected to have finished reduction in the prior iteration'"
            )
        self._give_probe_batches(opt, args, kwargs.get("model"), kwargs.get("train_dataloader"))
        if self.policy is not None:
            self._mask_step = self.policy.step_of(state.max_steps)

    def _give_probe_batches(self, opt: GeNAdaPEFT, args: Any, model: Any, loader: Any) -> None:
        replay = isinstance(opt.closure, ReplayClosure)
        if opt.probe_data is not None or not (opt.closure is None or replay):
            return
        if model is None or (self.probe_dataset is None and loader is None):
            return
        dataset = self.probe_dataset if self.probe_dataset is not None else loader.dataset
        collate = getattr(loader, "collate_fn", None)
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        opt.probe_data = ProbeBatches(
            dataset,
            args.per_device_train_batch_size,
            collate_fn=collate,
            seed=args.seed + 1 + rank,
            device=args.device,
        )
        old = opt.closure
        opt.closure = BatchLoss(model, loss_fn=old.loss_fn if replay else None)
        if replay:
            old.remove()  # its hook would keep recording (and holding) every training batch

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        opt = self._optimizer(optimizer)
        if opt is None or self._mask_step is None or opt.masked is not None:
            return
        if not self.policy.due(state.global_step, max_steps=state.max_steps):
            return
        selection, keep_trying = self.policy.switch(opt)
        if selection is not None:
            self.masked_at = state.global_step
        elif not keep_trying:
            self._mask_step = None  # no group fits the budget: keep training every group

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        opt = self._optimizer(optimizer)
        if opt is None or logs is None:
            return
        values = self.metrics(opt)
        # Trainer.log appended {**logs, "step": ...} to log_history before calling on_log.
        if state.log_history:
            last = state.log_history[-1]
            if last.get("step") == state.global_step:
                last.update(values)
        logs.update(values)

    @staticmethod
    def metrics(opt: GeNAdaPEFT) -> dict[str, float]:
        """The values added to each log: effective lr and APPI per group."""
        opt = unwrap_optimizer(opt)
        out = {f"{_LOG_PREFIX}/lr/{n}": float(v) for n, v in opt.lrs.items()}
        out.update({f"{_LOG_PREFIX}/appi/{n}": float(v) for n, v in opt.appi.items()})
        return out
