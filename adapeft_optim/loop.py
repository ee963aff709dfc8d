"""The training loop every part of the project runs: forward, backward, ``opt.step()``,
``zero_grad``. The demo's probe phase and recipes, ``adapeft select``, the examples and the
benchmarks all call :func:`run_steps`, so a change to how a step is taken is made once.

It is the loop of the README, nothing more: any optimizer works (a :class:`GeNAdaPEFT`
probes inside its own ``step()``), and the batches are whatever ``model(**batch)`` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, Protocol

import torch
from torch import nn


class Progress(Protocol):
    """What :func:`run_steps` reports to: a tqdm bar has this interface."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, *args: Any, **kwargs: Any) -> Any: ...

    def close(self) -> Any: ...


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Mapping[str, Any]],
    steps: int,
    *,
    loss_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> list[float]:
    """Take ``steps`` optimizer steps on the next ``steps`` batches, in training mode.

    Args:
        model (nn.Module): the model; put in training mode for the loop.
        optimizer (Optimizer): any optimizer over the model's trainable parameters, e.g. a
            :class:`~adapeft_optim.GeNAdaPEFT` (which probes inside ``step()``) or AdamW.
        batches (iterable of mappings): keyword arguments of ``model``; an endless generator
            or a list of at least ``steps`` batches.
        steps (int): optimizer steps to take (``0`` takes none).
        loss_fn (callable, optional): ``(model, batch) -> loss``; ``None`` for
            ``model(**batch).loss``, the transformers convention (default: None)
        progress (tqdm-like, optional): gets ``set_postfix(loss=...)`` and ``update()`` after
            each step and ``close()`` at the end, also on error (default: None)

    Returns:
        list[float]: the training loss of each step, before its update.

    Raises:
        ValueError: ``steps`` is not an int >= 0, or ``batches`` ran out before ``steps``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid steps: {steps!r}; use an int >= 0")
    loss_fn = loss_fn or _hf_loss
    losses: list[float] = []
    stream: Iterator[Mapping[str, Any]] = islice(iter(batches), steps)
    model.train()
    try:
        for batch in stream:
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress is not None:
                progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                progress.update()
    finally:
        if progress is not None:
            progress.close()
    if len(losses) < steps:
        raise ValueError(f"batches ran out after {len(losses)} of {steps} steps; pass more batches or fewer steps")
    return losses


def _hf_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    return model(**batch).loss
