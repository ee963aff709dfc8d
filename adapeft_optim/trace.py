"""What lets a probe leave no trace: RNG replay, module buffers put back, parameters moved
along a line from saved copies (tensor by tensor for FSDP2's DTensor shards), FSDP2 resharded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Note [Probes leave no trace]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# All forwards of one probe replay the same RNG state (so dropout draws one mask for all of
# them and the loss line is not noise), and the RNG state is put back afterwards: step() leaves
# the global CPU and CUDA generators where it found them. Buffers a forward changes (BatchNorm's
# running statistics, spectral norm's u and v) are put back too (_KeepBuffers), so a probe step
# leaves the model exactly as the training forward left it. If the closure raises, the step is
# completed at the pre-probe learning rates (what a non-probe step would have done), the fit of
# that probe is dropped, and the error propagates.


class _RNGState:
    """The global CPU and CUDA generator states, to replay and to put back."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class _KeepBuffers:
    """Puts back, on exit, the buffers of every module that ran a forward inside: BatchNorm's
    running statistics and counter, spectral norm's u and v (Note [Probes leave no trace]).

    A global forward pre-hook copies a module's own buffers the first time it runs, before its
    own pre-hooks (spectral norm updates u and v in one) and its forward.
    """

    def __enter__(self) -> _KeepBuffers:
        self._saved: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._save)
        return self

    def _save(self, module: nn.Module, args: Any) -> None:
        if id(module) not in self._saved:
            self._saved[id(module)] = (module, {n: b.clone() for n, b in module._buffers.items() if b is not None})

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        with torch.no_grad():
            for module, saved in self._saved.values():
                for name, value in saved.items():
                    now = module._buffers.get(name)
                    if now is not None and now.shape == value.shape and now.dtype == value.dtype:
                        now.copy_(value)
                    else:
                        module._buffers[name] = value
        self._saved.clear()


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


# Note [Sharded parameters]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# FSDP2 (fully_shard) keeps each parameter as a DTensor, the rank's shard. The probe's moves and
# restores are elementwise, so they run on the local shards, tensor by tensor (DTensor has no
# sharding strategy for the _foreach_ ops). A probe forward under no_grad leaves the root module
# unsharded (FSDP2 keeps the root's full parameters from forward to backward), so a later forward
# would read the full parameters of before the move: every FSDP module a probe forward ran is
# resharded after it (_Reshard), as a training backward would. Losses are all-reduced as under
# DDP, so every rank fits the same numbers and probes the same groups.


def _copy_(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if any(_is_dtensor(t) for t in dst):
        for d, s in zip(dst, src):
            d.copy_(s)
    else:
        torch._foreach_copy_(dst, src)


def _add_(dst: list[torch.Tensor], other: list[torch.Tensor], alpha: float) -> None:
    if any(_is_dtensor(t) for t in dst):
        for d, o in zip(dst, other):
            d.add_(o, alpha=alpha)
    else:
        torch._foreach_add_(dst, other, alpha=alpha)


def _direction(origin: list[torch.Tensor], now: list[torch.Tensor], lr: float | None) -> list[torch.Tensor]:
    """(origin − now) / lr, tensor by tensor for DTensors; ``lr`` None: no division; 0: zeros."""
    if not origin:
        return []
    if any(_is_dtensor(t) for t in origin):
        d = [o - n for o, n in zip(origin, now)]
        if lr is not None:
            d = [x.zero_() if lr == 0.0 else x.div_(lr) for x in d]
        return d
    d = torch._foreach_sub(origin, now)
    if lr is not None:
        if lr != 0.0:
            torch._foreach_div_(d, lr)
        else:
            torch._foreach_zero_(d)
    return d


class _Reshard:
    """Reshards every FSDP2 module a probe forward ran (Note [Sharded parameters])."""

    def __init__(self) -> None:
        self._modules: dict[int, nn.Module] = {}
        self._handle: Any = None

    def __enter__(self) -> _Reshard:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._seen)
        return self

    def _seen(self, module: nn.Module, args: Any, output: Any) -> None:
        if hasattr(module, "reshard") and type(module).__name__.startswith("FSDP"):
            self._modules.setdefault(id(module), module)

    def after_forward(self) -> None:
        for module in self._modules.values():
            module.reshard()

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._modules.clear()


class _Line:
    """Puts each param group at ``origin − c·d`` from saved copies (Note [The probe step])."""

    def __init__(
        self, params: list[list[torch.Tensor]], origin: list[list[torch.Tensor]], dirs: list[list[torch.Tensor]]
    ) -> None:
        self.params, self.origin, self.dirs = params, origin, dirs
        self._at: list[float | None] = [None] * len(params)  # unknown after the inner step

    def move(self, coefficients: Sequence[float]) -> None:
        # Only param groups whose coefficient changes are written, so a probe forward costs a
        # copy of one group, not of the model.
        for i, c in enumerate(coefficients):
            if self.params[i] and self._at[i] != c:
                _copy_(self.params[i], self.origin[i])
                if c != 0.0:
                    _add_(self.params[i], self.dirs[i], alpha=-c)
                self._at[i] = c
