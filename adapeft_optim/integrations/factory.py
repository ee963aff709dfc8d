"""GeNAdaPEFT through ``Trainer(optimizer_cls_and_kwargs=...)`` and framework optimizer wrappers.
Torch alone."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..grouping import base_name, group_parameters
from ..optimizer import GeNAdaPEFT
from .closures import replay_closure


def unwrap_optimizer(optimizer: Any) -> GeNAdaPEFT:
    """The :class:`GeNAdaPEFT` inside framework wrappers (accelerate's ``AcceleratedOptimizer``
    and the like keep the wrapped optimizer as ``.optimizer``).

    Raises:
        TypeError: no GeNAdaPEFT is found.
    """
    seen = optimizer
    for _ in range(8):
        if isinstance(optimizer, GeNAdaPEFT):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        if optimizer is None:
            break
    raise TypeError(
        f"no GeNAdaPEFT found in {type(seen).__name__} (nor in its .optimizer chain); give the Trainer "
        "optimizers=(GeNAdaPEFT(...), None) or optimizer_cls_and_kwargs=(GeNAdaPEFTFactory, {...})"
    )


def _distributed_world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# -- Trainer(optimizer_cls_and_kwargs=...) ------------------------------------------------------

_WRAPPER_KWARGS = frozenset(
    name for name in inspect.signature(GeNAdaPEFT.__init__).parameters if name not in ("self", "optimizer")
)

# The roles HF's Trainer exempts from weight decay (biases and LayerNorm weights).
_NO_DECAY_ROLES = ("bias", "norm")


class GeNAdaPEFTFactory:
    """Builds a :class:`GeNAdaPEFT` for ``Trainer(optimizer_cls_and_kwargs=(GeNAdaPEFTFactory, kwargs))``.

    transformers treats an ``optimizer_cls`` that is not an ``Optimizer`` subclass as a factory:
    it calls ``GeNAdaPEFTFactory()(model, **kwargs)`` with the model. The factory groups the
    model's trainable parameters with :func:`group_parameters`, builds the inner optimizer and,
    unless ``closure`` is given, a :func:`replay_closure` on the model, so no batch plumbing is
    needed. Needs a transformers version with optimizer factories (``is_optimizer_factory``,
    checked with 5.23); with older ones, which call ``optimizer_cls(params, **kwargs)``, it raises
    a ``TypeError`` saying to pass ``optimizers=(GeNAdaPEFT(...), None)`` instead.

    Keyword arguments (the ``kwargs`` dict):
        optimizer: the inner optimizer class (default: ``torch.optim.AdamW``).
        weight_decay: applied to every group except ``bias`` and ``norm``, as Trainer does
            (default: 0.0).
        granularity: passed to :func:`group_parameters` (default: ``"type"``).
        loss_fn: passed to :func:`replay_closure` (default: None).
        any :class:`GeNAdaPEFT` keyword (``lazy``, ``scales``, ``budget``, ``freeze``,
        ``closure``, ...) goes to the wrapper; everything else (``lr``, ``betas``, ``eps``,
        ...) to the inner optimizer.

    Example::

        trainer = Trainer(model, args, train_dataset=ds,
                          optimizer_cls_and_kwargs=(GeNAdaPEFTFactory, {"lr": 1e-4, "lazy": 8}),
                          callbacks=[GeNAdaPEFTCallback()])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise TypeError(
                "GeNAdaPEFTFactory was called like an optimizer class (params, **kwargs): this transformers "
                "version has no optimizer factories; pass optimizers=(GeNAdaPEFT(...), None) to the Trainer"
            )

    def __call__(
        self,
        model: nn.Module,
        *,
        optimizer: type = torch.optim.AdamW,
        weight_decay: float = 0.0,
        granularity: str = "type",
        loss_fn: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> GeNAdaPEFT:
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer class (e.g. torch.optim.AdamW), got {optimizer!r}"
            )
        if "groups" in kwargs:
            raise ValueError("GeNAdaPEFTFactory groups the model itself; pass granularity= instead of groups=")
        wrapper_kwargs = {k: v for k, v in kwargs.items() if k in _WRAPPER_KWARGS}
        inner_kwargs = {k: v for k, v in kwargs.items() if k not in _WRAPPER_KWARGS}
        groups = group_parameters(model, granularity=granularity)
        if not groups:
            raise ValueError(f"{type(model).__name__} has no trainable parameters to optimize")
        # One inner param group per named group keeps group_parameters' order in opt.names.
        param_groups = [
            {"params": ps, "weight_decay": 0.0 if base_name(n) in _NO_DECAY_ROLES else weight_decay}
            for n, ps in groups.items()
        ]
        inner = optimizer(param_groups, **inner_kwargs)
        if wrapper_kwargs.get("closure") is None:
            wrapper_kwargs["closure"] = replay_closure(model, loss_fn)
        return GeNAdaPEFT(inner, groups=groups, **wrapper_kwargs)


# -- Trainer callback ------------------------------------------------------------------------------
