"""The settings of ``adapeft demo`` (:class:`DemoConfig`) and the error a setting that cannot
work raises (:class:`DemoError`)."""

from __future__ import annotations

import dataclasses

from .task import BATCH_SIZE, PRETRAIN_STEPS, parse_size

__all__ = ["DemoConfig", "DemoError"]


class DemoError(RuntimeError):
    """A demo setting that cannot work (the message says which and what to change)."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`~adapeft_optim.demo.run_demo` (the ``adapeft demo`` flags).

    Args:
        seed (int): seed of LoRA initialisation and of the batch streams (default: 0)
        steps (int): fine-tuning steps T of every large-model run (default: 200)
        budget (float): fraction of the small model's parameters the selection may train
            (default: 0.1)
        small (str): size of the model probed (a :data:`~adapeft_optim.demo.task.SIZES` name
            or ``"LxD"``) (default: "small")
        large (str): size of the model the selection is transferred to (default: "large")
        warmup (int, optional): probing steps; ``None`` for 10% of ``steps`` (at least
            ``4 * lazy``, so a few probes happen) (default: None)
        lazy (int): probe every ``lazy`` warm-up steps (default: 2)
        method (str): ``"greedy"``, ``"prefix"`` or ``"exact"`` selection (default: "greedy")
        pretrain_steps (int): pre-training steps on task A (default: 200)
        batch_size (int): sequences per step (default: 16)
        plots (bool): write the PNGs (default: True)
    """

    seed: int = 0
    steps: int = 200
    budget: float = 0.1
    small: str = "small"
    large: str = "large"
    warmup: int | None = None
    lazy: int = 2
    method: str = "greedy"
    pretrain_steps: int = PRETRAIN_STEPS
    batch_size: int = BATCH_SIZE
    plots: bool = True

    def __post_init__(self) -> None:
        for key in ("steps", "lazy", "pretrain_steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DemoError(f"Invalid {key}: {value!r}; use an int >= 1")
        if self.warmup is not None and (
            isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1
        ):
            raise DemoError(f"Invalid warmup: {self.warmup!r}; use an int >= 1 (or leave it out for 10% of the steps)")
        if not (isinstance(self.budget, (int, float)) and 0.0 < self.budget <= 1.0):
            raise DemoError(f"Invalid budget: {self.budget!r}; use a fraction of parameters in (0, 1], e.g. 0.1")
        if self.method not in ("greedy", "prefix", "exact"):
            raise DemoError(f"Invalid method: {self.method!r}; use 'greedy', 'prefix' or 'exact'")
        for key in ("small", "large"):
            try:
                parse_size(getattr(self, key))
            except ValueError as err:
                raise DemoError(f"--{key}: {err}") from None

    @property
    def warmup_steps(self) -> int:
        # Algorithm 2 probes for 10% of the horizon; at least 4 probes so APPI is not one sample.
        return self.warmup if self.warmup is not None else max(4 * self.lazy, round(0.1 * self.steps))
