"""The inner optimizer: which ones can be wrapped, reading and writing their lr, stepping them.

GeNAdaPEFT reads the update direction off one inner step at lr 1 (Note [The probe step] in
probe.py), so the inner update must be linear in lr; the rest is refused at construction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


def _set_lr(group: dict, value: float) -> None:
    lr = group["lr"]
    group["lr"] = torch.as_tensor(value, dtype=lr.dtype, device=lr.device) if torch.is_tensor(lr) else value


def _lr_value(group: dict) -> float:
    lr = group["lr"]
    return float(lr.item()) if torch.is_tensor(lr) else float(lr)


# Inner optimizers whose update is not lr × (a direction that does not depend on lr): the probe
# reads d off one step at lr 1 and takes w − lr·d, which for these is another algorithm.
_NONLINEAR_IN_LR = {
    "LBFGS": "it runs a line search of its own",
    "ASGD": "its averaging and its eta schedule depend on lr",
    "Rprop": "its step sizes adapt by sign, not by lr",
}


def _check_inner(optimizer: Optimizer) -> None:
    """Refuse, at construction, inner optimizers the probe cannot wrap (Note [The probe step])."""
    name = type(optimizer).__name__
    supported = "SGD, Adam, AdamW, RMSprop, Adamax, NAdam, RAdam, Adagrad without lr_decay"
    why = _NONLINEAR_IN_LR.get(name)
    groups = optimizer.param_groups
    if why is None and isinstance(optimizer, torch.optim.Adagrad) and any(g.get("lr_decay", 0) for g in groups):
        why = "lr_decay makes its step depend on lr non-linearly"
    if why is None and name == "Adafactor" and any(g.get("relative_step") for g in groups):
        why = "relative_step=True sets its own lr (pass lr=..., relative_step=False, scale_parameter=False)"
    if why is not None:
        raise TypeError(f"{name} cannot be wrapped: {why}. GeNAdaPEFT needs an inner update linear in lr ({supported})")
    if any(g.get("maximize") for g in groups):
        raise ValueError(
            f"{name}(maximize=True) is not supported: the probes fit the loss the closure returns, which "
            "the step must decrease; minimise the negated objective instead"
        )
    for g in groups:
        for p in g["params"]:
            if hasattr(p, "ds_id"):
                raise NotImplementedError(
                    "DeepSpeed ZeRO-3 partitioned parameters are not supported: each rank holds a slice of every "
                    "parameter and the probes move whole ones. Use FSDP2 (fully_shard) or DDP, or probe a "
                    "single-process proxy and transfer the selection (transfer_selection)"
                )
            if getattr(p, "_is_flat_param", False) or type(p).__name__ == "FlatParameter":
                raise NotImplementedError(
                    "FSDP (FullyShardedDataParallel) flat parameters are not supported: ranks hold different "
                    "shards of one flat tensor, so they would probe different groups. Use FSDP2 (fully_shard) "
                    "or DDP, or probe a single-process proxy"
                )
    if getattr(optimizer.step, "_wrapped_by_lr_sched", False):
        raise RuntimeError(
            "an LR scheduler was built on this optimizer before wrapping it; GeNAdaPEFT splits its param "
            "groups, which that scheduler does not know. Build the scheduler on the GeNAdaPEFT instead"
        )


def _step_without_global_hooks(inner: Optimizer) -> Any:
    """``inner.step()`` with its own step hooks but not the global ones: those already ran for
    the wrapper's step, and one ``opt.step()`` is one step to a global hook."""
    raw = getattr(type(inner).step, "__wrapped__", None)  # torch's hook wrapper keeps the original
    if raw is None or "step" in vars(inner):
        return inner.step()
    args: tuple = ()
    kwargs: dict[str, Any] = {}
    for hook in inner._optimizer_step_pre_hooks.values():
        result = hook(inner, args, kwargs)
        if result is not None:
            args, kwargs = result
    out = raw(inner, *args, **kwargs)
    for hook in inner._optimizer_step_post_hooks.values():
        hook(inner, args, kwargs)
    return out


def _check_takes_batch(closure: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(closure)
    except (TypeError, ValueError):  # builtins and some C callables have none: trust the user
        return
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(
            "with probe_data the closure takes the probe batch: closure=lambda batch: model(**batch).loss"
        ) from None


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
