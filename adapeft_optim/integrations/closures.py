"""Probe batches and closures: what a GeNAdaPEFT probe evaluates in a training loop (design §9).

:class:`ProbeBatches` draws batches the step has not seen from a dataset, with its own
shuffling; :class:`BatchLoss` is the matching closure. :func:`replay_closure` re-runs the
model's last training forward (the gradient's own batch: a biased slope, kept with a warning).
Torch alone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..trace import _RNGState

__all__ = ["BatchLoss", "ProbeBatches", "ReplayClosure", "replay_closure"]

# Note [What the replay closure replays]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The replay measures the loss of the batch whose gradient gave the update direction. That slope
# is biased (d fits that batch's noise: 2-5x the slope on unseen data, measured on real text), so
# it warns once; ProbeBatches + BatchLoss are the unbiased path. The replay re-runs
# the last training forward with the same inputs, the same RNG state (GPT-2's dropout draws the
# masks the backward saw: the replayed L0 equals the training loss bit for bit) and the same
# autocast settings (a bf16 training forward is probed in bf16, not fp32). Only forwards run
# with gradients enabled are recorded, so evaluation and generation under no_grad do not replace
# the training batch, and the replays themselves are never recorded. The record holds the
# arguments by reference: copying a batch every forward would cost what the forward reads.

# Trainer passes the token count of the whole accumulated (and, under DDP, all-rank) batch, so a
# micro-batch loss is sum / total instead of the mean: probes would measure a fraction of the
# loss, and APPI would scale with gradient_accumulation_steps and the world size.
_DEFAULT_DROP_KWARGS = ("num_items_in_batch",)

_LOG_PREFIX = "adapeft"


def _unwrap_module(model: nn.Module) -> nn.Module:
    # DDP's forward would broadcast buffers (a collective) on every probe forward; the wrapped
    # module computes the same loss without it.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _autocast_device_types(module: nn.Module) -> tuple[str, ...]:
    types = ["cpu"]
    if torch.cuda.is_available():
        types.append("cuda")
    for p in module.parameters():
        if p.device.type not in types and p.device.type != "meta":
            types.append(p.device.type)
        break
    return tuple(types)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    if device_type == "cuda":
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return False, torch.float32


class ReplayClosure:
    """A closure that re-runs the model's last training forward and returns its loss.

    Made by :func:`replay_closure`; see there. Call it for the loss, :meth:`remove` it (or use
    it as a context manager) to detach the hook and drop the recorded batch.

    Attributes:
        module (nn.Module): the module whose forwards are recorded (a DDP wrapper's ``.module``).
        forwards (int): training forwards recorded so far (replays and no-grad forwards excluded).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any], Any] | None = None,
        *,
        drop_kwargs: Iterable[str] = _DEFAULT_DROP_KWARGS,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"replay_closure needs the model as an nn.Module (the one the training loop calls), "
                f"got {type(model).__name__}"
            )
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs -> scalar loss), got {type(loss_fn).__name__}")
        if isinstance(drop_kwargs, str):
            raise TypeError(
                f"drop_kwargs must be a collection of names, got the string {drop_kwargs!r}; pass ({drop_kwargs!r},)"
            )
        self.module = _unwrap_module(model)
        self.loss_fn = loss_fn
        self.drop_kwargs = tuple(drop_kwargs)
        self._autocast_types = _autocast_device_types(self.module)
        self._args: tuple | None = None
        self._kwargs: dict | None = None
        self._rng: _RNGState | None = None
        self._autocast: tuple[tuple[str, bool, torch.dtype], ...] = ()
        self._replaying = False
        self._warned = False
        self.forwards = 0
        self._handle = self.module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._replaying or not torch.is_grad_enabled():
            return
        self._args = args
        self._kwargs = {k: v for k, v in kwargs.items() if k not in self.drop_kwargs}
        self._rng = _RNGState()
        self._autocast = tuple((t, *_autocast_state(t)) for t in self._autocast_types)
        self.forwards += 1

    @property
    def recorded(self) -> bool:
        """Whether a training forward has been recorded (and not dropped by :meth:`remove`)."""
        return self._args is not None

    def __call__(self) -> Any:
        if self._handle is None:
            raise RuntimeError("this replay closure was removed; make a new one with replay_closure(model)")
        if self._args is None:
            raise RuntimeError(
                "replay_closure has not seen a training forward of the model yet: run the forward with "
                "gradients enabled (loss = model(**batch).loss; loss.backward()) before optimizer.step(), "
                "or pass an explicit closure (GeNAdaPEFT(..., closure=lambda: model(**batch).loss))"
            )
        if not self._warned:
            self._warned = True
            warnings.warn(
                "replay_closure probes the batch the gradient was computed on: its slope is biased (2-5x the "
                "slope on unseen data), so Newton lrs come out too large. Give GeNAdaPEFT probe_data= with "
                "closure=BatchLoss(model), or with a Trainer use GeNAdaPEFTCallback, which does that for you",
                UserWarning,
                stacklevel=2,
            )
        outer = _RNGState()
        self._replaying = True
        try:
            self._rng.restore()
            with contextlib.ExitStack() as stack:
                for device_type, enabled, dtype in self._autocast:
                    stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
                outputs = self.module(*self._args, **self._kwargs)
        finally:
            self._replaying = False
            outer.restore()
        return _loss_of(outputs, self.loss_fn)

    def remove(self) -> None:
        """Detach the forward hook and drop the recorded batch; the closure can no longer be called."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._args = self._kwargs = self._rng = None

    def __enter__(self) -> ReplayClosure:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._handle is None else ("recorded" if self._args is not None else "empty")
        return f"ReplayClosure({type(self.module).__name__}, {state})"


def _loss_of(outputs: Any, loss_fn: Callable[[Any], Any] | None) -> Any:
    if loss_fn is not None:
        return loss_fn(outputs)
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise TypeError(
            f"the model's output ({type(outputs).__name__}) has no loss: the batch had no labels (HF models "
            "compute .loss only from labels=...) or the model returns no .loss; put the labels in the batch "
            "or pass loss_fn=lambda outputs: ..."
        )
    return loss


def _to_device(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class BatchLoss:
    """The closure for ``probe_data``: ``BatchLoss(model)(batch)`` is ``model(**batch).loss``.

    A mapping batch is passed as keyword arguments, a tuple or list as positional ones, anything
    else as the one argument. A DDP / DataParallel wrapper is unwrapped, so probe forwards run
    without its collectives (GeNAdaPEFT all-reduces the probe losses itself).

    Args:
        model (nn.Module): the model.
        loss_fn (callable): outputs → scalar loss, for models whose output has no ``.loss``
            (default: None, ``outputs.loss``).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any], Any] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"BatchLoss needs the model as an nn.Module, got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs -> scalar loss), got {type(loss_fn).__name__}")
        self.module = _unwrap_module(model)
        self.loss_fn = loss_fn

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, Mapping):
            outputs = self.module(**batch)
        elif isinstance(batch, (tuple, list)):
            outputs = self.module(*batch)
        else:
            outputs = self.module(batch)
        return _loss_of(outputs, self.loss_fn)

    def __repr__(self) -> str:
        return f"BatchLoss({type(self.module).__name__})"


class ProbeBatches(Sequence):
    """Probe batches drawn from ``dataset`` in an order of their own: a second iterator over the
    training data (or a held-out split). Batch ``k`` holds the rows ``perm[k·b:(k+1)·b]`` of one
    fixed permutation made from ``seed``, so batch ``k`` is the same after a resume (GeNAdaPEFT
    indexes a sequence by its count of probes, modulo its length).

    Args:
        dataset: a map-style dataset (what ``torch.utils.data.DataLoader`` takes).
        batch_size (int): rows per probe batch (the last batch may be smaller).
        collate_fn (callable): as in ``DataLoader`` (default: None, torch's default collate).
        seed (int): permutation seed; use another one than the training loader's (default: 1).
        device: where to put the batch's tensors (default: None, leave them).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        collate_fn: Callable[[Any], Any] | None = None,
        seed: int = 1,
        device: torch.device | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size!r}; use an int >= 1")
        if len(dataset) == 0:
            raise ValueError("the probe dataset is empty; give it at least one row")
        self.dataset, self.batch_size = dataset, batch_size
        self.collate_fn = collate_fn if collate_fn is not None else torch.utils.data.default_collate
        self.seed, self.device = int(seed), device
        self._order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed)).tolist()

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __getitem__(self, k: int) -> Any:  # type: ignore[override]
        if not -len(self) <= k < len(self):
            raise IndexError(f"probe batch {k} out of range ({len(self)} batches)")
        k %= len(self)
        rows = self._order[k * self.batch_size : (k + 1) * self.batch_size]
        return _to_device(self.collate_fn([self.dataset[i] for i in rows]), self.device)

    def __repr__(self) -> str:
        return f"ProbeBatches({len(self.dataset)} rows, batch_size={self.batch_size}, seed={self.seed})"


def replay_closure(
    model: nn.Module,
    loss_fn: Callable[[Any], Any] | None = None,
    *,
    drop_kwargs: Iterable[str] = _DEFAULT_DROP_KWARGS,
) -> ReplayClosure:
    """A GeNAdaPEFT closure that re-runs the model's last training forward.

    .. warning:: The replay probes the batch whose gradient made the step, and the slope measured
       there is biased: 2-5x the slope on unseen data (real text, GPT-2 + LoRA), so Newton lrs
       come out several times too large. It warns on first use. Prefer ``probe_data=`` with
       :class:`BatchLoss`; with a Trainer, :class:`GeNAdaPEFTCallback` sets that up.

    Frameworks (HF ``Trainer``, ``accelerate``, Lightning) call ``optimizer.step()`` with no
    closure and never show the batch to the optimizer. This registers a forward pre-hook on
    ``model`` that records the positional and keyword arguments, the RNG state (CPU and CUDA)
    and the autocast settings of every forward run with gradients enabled; calling the
    returned closure re-runs the last one and returns its ``.loss`` (or ``loss_fn(outputs)``).

    - Forwards under ``torch.no_grad()`` / ``inference_mode`` (evaluation, generation) are
      not recorded, nor are the closure's own replays.
    - The replay restores the recorded RNG state, so dropout draws the masks the training
      forward drew, and puts the caller's RNG state back afterwards.
    - The probes run under ``torch.no_grad()`` (the optimizer sees to that), in the model's
      current train/eval mode.
    - ``drop_kwargs`` are left out of the replay: by default ``num_items_in_batch``, which
      ``Trainer`` passes so that a micro-batch loss is a fraction of the accumulated one; the
      replay measures the micro-batch's mean loss instead.
    - Under gradient accumulation the replay re-runs the last micro-batch only.
    - A DDP / DataParallel wrapper is unwrapped: the hook sits on ``model.module`` (so it
      survives re-wrapping) and the replay runs without DDP's buffer broadcast.

    Memory: the closure holds **references** (not copies) to the last training forward's
    arguments, so that batch (``input_ids``, ``attention_mask``, ``labels``, ..., on whatever
    device it was) stays alive until the next training forward replaces it: at most one extra
    batch, no activations. Inputs the model or loop modifies in place after the forward are
    replayed modified. :meth:`ReplayClosure.remove` drops the record and the hook.

    Args:
        model (nn.Module): the module the training loop calls (a transformers or peft model,
            or any module; a DDP wrapper is unwrapped).
        loss_fn (callable): maps the model's outputs to the scalar loss, for models whose
            output has no ``.loss`` (default: None, use ``outputs.loss``).
        drop_kwargs (iterable of str): keyword arguments not to replay
            (default: ``("num_items_in_batch",)``).

    Returns:
        ReplayClosure: callable with no arguments returning the loss; ``remove()`` detaches
        it; usable as a context manager.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``loss_fn`` is not callable.

    Example::

        with replay_closure(model) as closure:
            opt = GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-4),
                             closure=closure, groups=group_parameters(model))
            for batch in loader:
                model(**batch).loss.backward()   # recorded
                opt.step()                       # probes replay it
                opt.zero_grad()
    """
    return ReplayClosure(model, loss_fn, drop_kwargs=drop_kwargs)


# -- finding the optimizer inside framework wrappers ---------------------------------------------
