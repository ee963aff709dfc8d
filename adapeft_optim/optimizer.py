"""GeNAdaPEFT: a torch.optim wrapper that sets a generalized-Newton learning rate per parameter
group, accumulates each group's influence (APPI) and trains only a selected subset on request.

design §3-§4 and §7; the paper's Algorithm 1 (arXiv 2505.12579) on top of GeN (Bu & Xu).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from .inner import _lr_value, _set_lr, _step_without_global_hooks
from .masking import MaskedMode
from .options import check_options, check_scales, check_slope, check_slope_engine
from .probe import NO_BATCH, Probe, next_probe_batch
from .state import _GroupStats, _shared, init_state, split_param_groups, validate_state_dict

__all__ = ["GeNAdaPEFT"]

Closure = Callable[[], torch.Tensor | float]


class GeNAdaPEFT(MaskedMode, Optimizer):
    r"""Generalized-Newton learning rates and parameter influence per parameter group.

    Wraps any optimizer whose update is linear in its learning rate and, every ``lazy`` steps,
    probes each parameter group's loss along the inner update direction with a few forward
    passes, fits :math:`\Delta L(\eta) = -\eta b + \tfrac12\eta^2 A`, and

    .. code-block:: text

        accept if b > 0, A > z·se(A), R² ≥ r2_min          (b, A on a probe batch, unseen)
        PPI_k   = b² / (A · n_k);  APPI_k += PPI_k                      (paper eq. 14)
        η*_k    = b / A
        lr_k   ← smoothing·lr_k + (1 − smoothing)·clamp(η*_k, lr_k/max_change, lr_k·max_change)
        lr_k   ← min(lr_k, max_lr_factor · lr_k(wrapped))
        t*      = b/A of the joint line L(w − t Σ_k lr_k d_k);  lr_k ← lr_k · clamp(t*, 1/max_change, 1)
        w_k    ← w_k − lr_k · d_k                                       (d_k: inner update per unit lr)

    The wrapper shares the inner optimizer's ``param_groups``, ``state`` and ``defaults``; each
    inner param group is split by named group and carries ``adapeft_name`` and
    ``adapeft_base_lr``. ``group["lr"]`` stays the user's (or the LR scheduler's): the effective
    lr is ``newton_lr × group["lr"] / adapeft_base_lr``.

    Args:
        optimizer: the inner optimizer (e.g. ``torch.optim.AdamW``); its update must be linear in
            ``lr``: SGD, Adam, AdamW, RMSprop, Adamax, NAdam, RAdam are; Adagrad with
            ``lr_decay`` and Adafactor's relative step are not.
        closure: returns a loss by a forward pass, without calling ``backward()``. With
            ``probe_data`` it takes the probe batch (``lambda batch: model(**batch).loss``);
            without, it takes no argument and must itself evaluate data the step has not seen
            (the loop's current batch gives a biased slope, Note [Probe batches]).
            ``step(closure)`` overrides it for one step (default: None).
        groups: mapping name → parameters, e.g. from :func:`group_parameters`; every parameter of
            the optimizer in exactly one group. ``None``: one group per inner param group
            (default: None).
        probe_data: an iterable of batches the training step has not seen (a held-out split,
            or a second iterator over the training data); one batch per probe, started over
            when it ends (default: None).
        lazy: probe every ``lazy`` steps, starting with the first; 0 turns probing off
            (default: 8).
        slope: ``"backward"``: every group's slope b from one forward and backward on the probe
            batch, only A fitted from the forwards at ``scales``, reused between measurements
            (Notes [Slopes from a backward pass], [Curvature reuse]). ``"stencil"``: b and A
            fitted from forwards (the paper). ``"auto"``: backward in one process, the stencil
            across ranks or where reentrant checkpointing refuses autograd.grad
            (default: "auto").
        scales: probe points in units of a group's effective lr; ``None``: ``(-2, 2)`` with a
            backward slope, the paper's ``(-2, -1, 1, 2)`` with the stencil. A single scale needs
            ``slope="backward"`` (default: None).
        r2_min: minimum R² of an accepted fit (default: 0.99).
        smoothing: weight of the old lr in the Newton update, in [0, 1) (default: 0.9).
        max_change: most a single probe may multiply or divide the lr by, ≥ 1 (default: 2.0).
        z: standard errors the curvature must stand above zero (default: 3.0).
        loss_rtol: relative rounding level of the loss; ``None``: 8 ulps of the closure's loss
            dtype (float32: ~1e-6) (default: None).
        max_spacing: most a group's probe points may be widened, as a multiple of its lr
            (default: 1024.0).
        budget: fraction of parameters for the automatic switch to masked mode, with
            ``select_after`` and/or ``stable_probes`` (default: None).
        select_after: switch to masked mode after this many steps (default: None).
        stable_probes: switch once the APPI ranking has not changed for this many probe steps
            (default: None).
        select_method: ``"greedy"`` or ``"exact"`` for the automatic switch (default: "greedy").
        freeze: how masked mode stops unselected groups: ``True`` sets ``requires_grad=False``
            (backward skips them: PEFT cost); ``False`` keeps ``requires_grad`` and drops their
            ``.grad`` before each step (for DDP, whose reducer must see the same parameters every
            step; the other way under DDP is ``freeze=True`` and a new DDP wrapper after ``mask()``)
            (default: True).
        history_size: probe records kept in :attr:`history`, the newest; a log, not checkpoint
            state (default: 10000).
        max_lr_factor: ceiling of each group's lr, as a multiple of the lr it was wrapped with
            (default: 10.0).
        joint_check: probe the combined step of all groups (one or two more forwards) and scale
            the lrs down when it overshoots its Newton point (Note [The joint step]) (default: True).
        adapt_lr: ``False`` measures influence only: probes and APPI as usual, every lr and the
            trajectory those of the bare inner optimizer, bit for bit (default: True).
        max_interval: a group's curvature is measured at every 2nd, then 4th, ... probe step up
            to this: with a backward slope while accepted fits find it stable (Note [Curvature reuse]), with
            the stencil once settled (Note [Settled groups]); 1 measures every group at every
            probe step (default: 4).

    Example:
        >>> groups = group_parameters(model)
        >>> opt = GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-4),
        ...                  closure=lambda batch: model(**batch).loss,
        ...                  probe_data=held_out_batches, groups=groups)
        >>> loss = model(**batch).loss; loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        closure: Callable[..., Any] | None = None,
        groups: Mapping[str, Iterable[torch.Tensor]] | None = None,
        *,
        probe_data: Iterable[Any] | None = None,
        lazy: int = 8,
        slope: str = "auto",
        scales: Sequence[float] | None = None,
        r2_min: float = 0.99,
        smoothing: float = 0.9,
        max_change: float = 2.0,
        z: float = 3.0,
        loss_rtol: float | None = None,
        max_spacing: float = 1024.0,
        budget: float | None = None,
        select_after: int | None = None,
        stable_probes: int | None = None,
        select_method: str = "greedy",
        freeze: bool = True,
        history_size: int = 10_000,
        max_lr_factor: float = 10.0,
        joint_check: bool = True,
        adapt_lr: bool = True,
        max_interval: int = 4,
    ) -> None:
        check_options(
            optimizer, closure, probe_data, lazy, r2_min, smoothing, max_change, z, loss_rtol, max_spacing,
            budget, select_after, stable_probes, select_method, max_lr_factor, max_interval, history_size,
        )  # fmt: skip
        self.slope = check_slope(slope)
        scales = check_scales(scales, slope)
        self._init_hooks()
        self.optimizer, self.closure, self.lazy, self.scales = optimizer, closure, lazy, scales
        self.r2_min, self.smoothing, self.max_change = float(r2_min), float(smoothing), float(max_change)
        self.z, self.loss_rtol, self.max_spacing = float(z), loss_rtol, float(max_spacing)
        self.select_after, self.stable_probes, self.select_method = select_after, stable_probes, select_method
        self.freeze, self.max_lr_factor = bool(freeze), float(max_lr_factor)
        self.joint_check, self.adapt_lr, self.max_interval = bool(joint_check), bool(adapt_lr), max_interval
        self._probe_data, self._probe_iter = probe_data, None
        self.history_size = history_size
        self.history: list[dict[str, Any]] = []

        split_param_groups(self.optimizer.param_groups, groups)
        self._shapes = self._param_shapes()
        check_slope_engine(slope, [p for g in self.param_groups for p in g["params"]])
        init_state(self.param_groups)  # Note [State in the param groups]
        self.budget = budget
        # Which groups cannot learn alone, read off the weights as wrapped (lora_A while lora_B is
        # zero): a selection is applied to a fresh adapter, whatever training did to this one.
        from .selection import group_dependencies

        self.requires = group_dependencies(
            {n: [p for g in self._groups_of(n) for p in g["params"]] for n in self.names}
        )

    def _init_hooks(self) -> None:
        # Optimizer.__init__ would rebuild param groups from scratch; we share the inner ones.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    @property
    def probe_data(self) -> Iterable[Any] | None:
        """The batches probes evaluate (Note [Probe batches]); setting it starts them over."""
        return self._probe_data

    @probe_data.setter
    def probe_data(self, value: Iterable[Any] | None) -> None:
        self._probe_data = value
        self._probe_iter = None

    # -- sharing the inner optimizer ------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self):  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    # -- the wrapper's state, in the param groups (Note [State in the param groups]) ---------------
    _step = _shared("step", "Steps taken (probe steps included).")
    _probe_count = _shared("probe_count", "Probe batches drawn so far.")
    _recent_l0 = _shared("recent_l0", "Probe losses of the last probes (Note [Divergence guard]).")
    _mask = _shared("mask", "The selected group names in masked mode, else None.")
    _ranking = _shared("ranking", "The APPI ranking at the last probe, for stable_probes.")
    _stable_count = _shared("stable_count", "Probes the ranking has not changed for.")
    budget = _shared("budget", "Fraction of parameters for the automatic switch, or None.")
    _selection_json = _shared("selection", "The Selection trained in masked mode, as JSON, or None.")

    @property
    def _stats(self) -> dict[str, _GroupStats]:
        return {n: _GroupStats(self._groups_of(n)) for n in self.names}

    @property
    def requires(self) -> dict[str, tuple[str, ...]]:
        """Which group cannot learn without which, as wrapped (e.g. ``{"lora_A": ("lora_B",)}``)."""
        return {
            n: tuple(self._groups_of(n)[0]["adapeft_requires"])
            for n in self.names
            if self._groups_of(n)[0]["adapeft_requires"]
        }

    @requires.setter
    def requires(self, value: Mapping[str, Sequence[str]]) -> None:
        for g in self.param_groups:
            g["adapeft_requires"] = tuple(value.get(g["adapeft_name"], ()))

    @property
    def selection(self):
        """The :class:`~adapeft_optim.selection.Selection` trained in masked mode, else ``None``."""
        from .selection import Selection

        text = self._selection_json
        return Selection.from_json(text) if text is not None else None

    @selection.setter
    def selection(self, value) -> None:
        self._selection_json = value.to_json() if value is not None else None

    # -- public read-outs -----------------------------------------------------------------------
    def _groups_of(self, name: str) -> list[dict]:
        return [g for g in self.param_groups if g["adapeft_name"] == name]

    @property
    def names(self) -> list[str]:
        """Group names, in order."""
        return list(dict.fromkeys(g["adapeft_name"] for g in self.param_groups))

    @property
    def appi(self) -> dict[str, float]:
        """Accumulated per-parameter influence of each group (every valued probe: Note [Influence of every probe])."""
        return {n: s["appi"] for n, s in self._stats.items()}

    @property
    def lrs(self) -> dict[str, float]:
        """Effective learning rate of each group now (that of its first param group)."""
        return {n: s["factor"] * _lr_value(self._groups_of(n)[0]) for n, s in self._stats.items()}

    @property
    def newton_lrs(self) -> dict[str, float]:
        """Newton learning rate of each group, in units of the lr it was wrapped with."""
        return {n: s["factor"] * self._groups_of(n)[0]["adapeft_base_lr"] for n, s in self._stats.items()}

    @property
    def numel(self) -> dict[str, int]:
        """Number of parameters in each group."""
        return {n: sum(p.numel() for g in self._groups_of(n) for p in g["params"]) for n in self._stats}

    # -- the step -------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _param_shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return [tuple(tuple(p.shape) for p in g["params"]) for g in self.param_groups]

    def _check_params_unchanged(self) -> None:
        if self._param_shapes() != self._shapes:
            raise RuntimeError(
                "the optimizer's parameters were replaced after wrapping (DeepSpeed ZeRO-1/2 flattens them into "
                "partitions of its own): the probes would move tensors the model does not read. GeNAdaPEFT "
                "supports DDP and FSDP2 (fully_shard); nothing was changed"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise RuntimeError(
            "GeNAdaPEFT cannot take new param groups; add them to the inner optimizer before wrapping it"
        )

    def _inner_step(self, lrs: Sequence[float]) -> None:
        saved = [g["lr"] for g in self.param_groups]
        for g, lr in zip(self.param_groups, lrs):
            _set_lr(g, lr)
        try:
            _step_without_global_hooks(self.optimizer)
        finally:
            for g, lr in zip(self.param_groups, saved):
                g["lr"] = lr

    def _effective_lrs(self) -> list[float]:
        return [g["adapeft_factor"] * _lr_value(g) for g in self.param_groups]

    def step(self, closure: Closure | None = None) -> torch.Tensor | None:
        """Perform one optimization step, probing the groups every ``lazy`` steps.

        Args:
            closure: overrides the constructor's closure for this step; with ``probe_data`` it
                takes the probe batch, else no argument (default: None).

        Returns:
            On a probe step, the probe's loss at the pre-step weights (on the probe batch);
            otherwise ``None``: the closure is not called on other steps.
        """
        if closure is not None and not callable(closure):
            raise TypeError(f"closure must be callable, got {type(closure).__name__}")
        self._check_params_unchanged()
        if self._mask is not None and not self.freeze:
            self._drop_masked_grads()
        lrs = self._effective_lrs()
        if all(lr == 0.0 for lr in lrs):
            # A step that moves nothing (torch.distributed.checkpoint's state initialisation sets
            # every lr to 0; a schedule at 0): the inner step alone, not probed, not counted.
            _step_without_global_hooks(self.optimizer)
            return None
        probing = self.lazy > 0 and self._step % self.lazy == 0
        loss = None
        with torch.no_grad():
            if probing:
                closure = closure if closure is not None else self.closure
                if closure is None:
                    raise RuntimeError(
                        f"step {self._step} is a probe step (lazy={self.lazy}) but no closure is available: pass "
                        "closure=lambda batch: model(**batch).loss with probe_data= to GeNAdaPEFT, or call "
                        "step(closure)"
                    )
                batch = next_probe_batch(self) if self.probe_data is not None else NO_BATCH
                loss = Probe(self, closure, batch).run()
            else:
                self._inner_step(lrs)
                self._step += 1
        self._maybe_switch(probed=probing)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict made by :meth:`state_dict` of a GeNAdaPEFT built the same way.

        All or nothing: the ``adapeft_*`` values are validated first (errors name the key), and
        if the inner optimizer refuses the state, the optimizer is left exactly as it was. The
        wrapper's load-state-dict hooks run around it.
        """
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        validate_state_dict(state_dict, [g["adapeft_name"] for g in self.param_groups])
        before = copy.deepcopy(self.optimizer.state_dict())
        try:
            self.optimizer.load_state_dict(state_dict)
        except BaseException:
            self.optimizer.load_state_dict(before)
            raise
        if self._mask is not None:
            self._apply_mask(tuple(self._mask))
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer.__getstate__ keeps defaults/state/param_groups only, which here are
        # views of the inner optimizer: keep everything, but not a live iterator over probe_data.
        state = self.__dict__.copy()
        state["_probe_iter"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"GeNAdaPEFT(lazy={self.lazy}, slope={self.slope!r}, scales={self.scales}, "
            f"r2_min={self.r2_min}, "
            f"smoothing={self.smoothing}, max_change={self.max_change}, groups={self.names}, "
            f"masked={self._mask},\n  {self.optimizer!r})"
        )
