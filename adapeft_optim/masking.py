"""Masked mode: which groups train once a selection is made, and when the switch happens.

:class:`MaskedMode` is the part of :class:`~adapeft_optim.optimizer.GeNAdaPEFT` that selects
(``select``), switches (``mask``, ``mask_at_budget``) and keeps unselected groups still.
:class:`SwitchPolicy` is the one rule for when to switch, used by the optimizer's automatic
switch (``budget`` with ``select_after`` / ``stable_probes``) and by the Trainer callback
(``mask_at``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .inner import _world_size

if TYPE_CHECKING:
    from .selection import Selection

_METHODS = ("greedy", "prefix", "exact")


def check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"Invalid method: {method!r}; use {', '.join(repr(m) for m in _METHODS)}")
    return method


@dataclass(frozen=True)
class SwitchPolicy:
    """When to switch to masked mode, and at which budget.

    Args:
        budget: fraction of all parameters to keep training, in [0, 1].
        method: ``"greedy"``, ``"prefix"`` or ``"exact"`` (see ``GeNAdaPEFT.select``).
        at: switch at this optimizer step (an int), or after this fraction of training (a float
            in (0, 1], resolved against the run's length by :meth:`step_of`); None: no fixed step.
        stable_probes: switch once the APPI ranking has held for this many probe steps and
            every group has a valued probe; None: no such rule.
    """

    budget: float
    method: str = "greedy"
    at: int | float | None = None
    stable_probes: int | None = None

    def __post_init__(self) -> None:
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget <= 1.0:
            raise ValueError(f"Invalid budget: {budget!r}; use a fraction of parameters in [0, 1]")
        check_method(self.method)

    def step_of(self, max_steps: int | None = None) -> int | None:
        """The step to switch at: ``at`` itself, or its fraction of ``max_steps``."""
        if self.at is None or (isinstance(self.at, float) and not max_steps):
            return None
        return self.at if isinstance(self.at, int) else max(1, math.ceil(self.at * max_steps))

    def due(self, step: int, *, max_steps: int | None = None, stable_count: int = 0, all_valued: bool = False) -> bool:
        at = self.step_of(max_steps)
        stable = self.stable_probes is not None and stable_count >= self.stable_probes and all_valued
        return (at is not None and step >= at) or stable

    def switch(self, opt: Any) -> tuple[Selection | None, bool]:
        """Switch ``opt`` (a GeNAdaPEFT) to masked mode at the budget, if it can.

        Returns:
            ``(selection, keep_trying)``: the Selection now trained, or None with
            ``keep_trying`` True while no probe has been valued yet, False when probes were
            valued but no group fits the budget (the run goes on training every group).
        """
        selection = opt.mask_at_budget(self.budget, self.method)
        if selection is not None:
            return selection, False
        return None, not opt._any_valued()


class MaskedMode:
    """Selection and masked mode of GeNAdaPEFT (design §7); a mixin of its class."""

    @property
    def masked(self) -> tuple[str, ...] | None:
        """The selected group names in masked mode, else ``None``."""
        return self._mask

    def _active(self, name: str) -> bool:
        return self._mask is None or name in self._mask

    def _drop_masked_grads(self) -> None:
        for g in self.param_groups:
            if not self._active(g["adapeft_name"]):
                for p in g["params"]:
                    p.grad = None

    def select(self, budget: float, method: str = "greedy"):
        """Groups worth training under ``budget`` (a fraction of all parameters), from ``appi``.

        Args:
            budget: fraction of all parameters in [0, 1].
            method: ``"greedy"`` (walk the APPI order, skipping what does not fit),
                ``"prefix"`` (the paper's nested prefixes: stop at the first that does not fit)
                or ``"exact"`` (0-1 knapsack, paper eq. 4) (default: "greedy").

        Groups that could not learn alone when the optimizer was built (``lora_A`` while its
        ``lora_B`` was zero, see :func:`~adapeft_optim.selection.group_dependencies`) are only
        selected together with their partner.

        Returns:
            A :class:`~adapeft_optim.selection.Selection` (empty, with an
            ``EmptySelectionWarning`` naming the smallest budget that fits, when nothing fits).
        """
        from .selection import select_groups

        if not self._any_valued():
            raise RuntimeError(
                "select() needs at least one valued probe (a finite, parabola-shaped line); run more steps "
                "(probes happen every "
                f"lazy={self.lazy} steps) or check opt.history for why probes were rejected"
            )
        return select_groups(self.appi, self.numel, budget, method=method, requires=self.requires)

    def mask(self, selection) -> None:
        """Switch to masked mode: only the selected groups train from now on (design §7).

        Unselected groups lose their gradients and inner optimizer state and are never updated
        again; with ``freeze=True`` they also get ``requires_grad_(False)``. Probes and APPI go on
        for the selected groups only.

        Args:
            selection: a :class:`~adapeft_optim.selection.Selection` or an iterable of group names.
        """
        if self._mask is not None:
            raise RuntimeError(f"already in masked mode with {list(self._mask)}; masked mode is switched on once")
        names = (selection,) if isinstance(selection, str) else tuple(getattr(selection, "groups", selection))
        unknown = [n for n in names if n not in self._stats]
        if unknown:
            raise ValueError(f"unknown group name(s) {unknown}; the groups are {self.names}")
        if not names:
            raise ValueError("the selection is empty: masked mode would train nothing; raise the budget")
        if self.freeze and _world_size() > 1:
            # DDP's reducer waits for a gradient of every parameter it was built with; frozen ones
            # never send one, and the next forward fails with "Expected to have finished reduction".
            warnings.warn(
                "masked mode with freeze=True under torch.distributed: wrap the module in a new "
                "DistributedDataParallel after mask() (it then reduces only the selected groups), or build "
                "GeNAdaPEFT(..., freeze=False) to keep every parameter in the reduction",
                RuntimeWarning,
                stacklevel=2,
            )
        self._apply_mask(names)
        self.selection = selection if hasattr(selection, "to_json") else None

    def _any_valued(self) -> bool:
        return any(s["valued"] for s in self._stats.values())

    def mask_at_budget(self, budget: float, method: str = "greedy"):
        """Switch to masked mode with ``select(budget, method)`` when that is possible.

        For automatic switches in the middle of a run, where raising would end it over a setting:
        instead of the errors of :meth:`select` and :meth:`mask` it warns and returns ``None`` when
        no probe has been valued yet (call again later) or when no group fits ``budget``.

        Returns:
            The :class:`~adapeft_optim.selection.Selection` now trained, or ``None``.
        """
        if not self._any_valued():
            warnings.warn(
                "masked switch postponed: no probe has been valued yet (see opt.history for the reasons)",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        from .selection import EmptySelectionWarning, greedy_order

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptySelectionWarning)  # said below, in context
            selection = self.select(budget, method)
        if not selection.groups:
            notes = " ".join(selection.notes)
            warnings.warn(
                f"masked switch skipped: no group fits budget={budget} (greedy order "
                f"{greedy_order(self.appi, self.numel)}, sizes {self.numel}); raise the budget. {notes}",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        self.mask(selection)
        return selection

    def _apply_mask(self, names: tuple[str, ...]) -> None:
        self._mask = tuple(n for n in self._stats if n in names)
        for g in self.param_groups:
            if g["adapeft_name"] not in self._mask:
                for p in g["params"]:
                    p.grad = None
                    self.state.pop(p, None)
                    if self.freeze:
                        p.requires_grad_(False)

    def _maybe_switch(self, probed: bool) -> None:
        """The automatic switch (``budget`` with ``select_after`` / ``stable_probes``)."""
        if self.budget is None or self._mask is not None:
            return
        policy = SwitchPolicy(self.budget, self.select_method, self.select_after, self.stable_probes)
        if probed and policy.stable_probes is not None:
            from .selection import greedy_order

            ranking = tuple(greedy_order(self.appi, self.numel))
            self._stable_count = self._stable_count + 1 if ranking == self._ranking else 0
            self._ranking = ranking
        all_valued = all(s["valued"] for s in self._stats.values())
        if policy.due(self._step, stable_count=self._stable_count, all_valued=all_valued):
            _, keep_trying = policy.switch(self)
            if not keep_trying:
                self.budget = None  # nothing fits: keep training every group, stop trying
