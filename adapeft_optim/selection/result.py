"""The :class:`Selection` record: the groups chosen to train, and the tables they came from.

A plain, frozen, JSON-serialisable dataclass. It checks its own consistency (known and
distinct groups, a fraction within the budget, the required groups selected) and derives
what explains the choice: sizes, fraction, predicted value, unprobed groups, notes. Its
JSON form is in :mod:`.json_format`, its notes in :mod:`.notes`, its peft setup in
:mod:`.peft_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .json_format import _json_fields, _to_dict
from .knapsack import _exact_value
from .notes import _notes
from .peft_config import _check_lora, _lora_settings, _peft_config
from .validation import (
    SELECTION_METHODS,
    _check_budget,
    _check_mapping,
    _check_method,
    _check_name,
    _check_requires,
    _check_table,
)

if TYPE_CHECKING:
    import peft
    from torch import nn

# "manual": a Selection built from hand-picked group names (Selection.from_groups), e.g.
# the fixed PEFT recipes (BitFit = ("bias",)) compared against in the demo.
_SELECTION_KINDS = SELECTION_METHODS + ("manual",)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The groups chosen to train, with everything needed to explain and reuse the choice.

    A plain, frozen, JSON-serialisable record: make one with :func:`select_groups` (or
    ``opt.select(budget)``), store it with :meth:`to_json` / :meth:`save`, apply it to any
    model grouped the same way with :func:`apply_selection`, rebuild the peft setup with
    :meth:`to_peft_config`.

    Args:
        groups (tuple[str, ...]): the selected group names, in greedy order.
        numel (dict[str, int]): parameter count of every candidate group (selected or not).
        appi (dict[str, float]): APPI of every candidate group, the table chosen from.
        method (str): ``"greedy"``, ``"prefix"``, ``"exact"`` or ``"manual"``
            (:meth:`from_groups`).
        budget (float): the budget in [0, 1] the selection honours (``fraction <= budget``).
        requires (dict[str, tuple[str, ...]]): the dependencies it was chosen under
            (group -> groups it cannot learn without, see :func:`group_dependencies`);
            every selected group's requirements are selected (default: none)
        lora (dict, optional): the LoRA settings of the run (``target_modules``, ``r``,
            ``lora_alpha``, ...; see :meth:`with_lora`) for :meth:`to_peft_config`
            (default: ``None``)

    Raises:
        TypeError, ValueError: inconsistent fields (unknown or repeated selected groups,
            tables with different names, a fraction above the budget, a selected group
            without a group it requires, ...).
    """

    groups: tuple[str, ...]
    numel: dict[str, int]
    appi: dict[str, float]
    method: str
    budget: float
    requires: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    lora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Snapshot the tables: opt.appi keeps changing after select() returns.
        appi, numel = _check_table(self.appi, self.numel)
        groups = _check_groups(self.groups, numel)
        method = _check_method(self.method, _SELECTION_KINDS)
        budget = _check_budget(self.budget)
        requires = _check_requires(self.requires, numel)
        _check_required_selected(groups, requires)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "appi", appi)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "budget", budget)
        object.__setattr__(self, "requires", requires)
        object.__setattr__(self, "lora", _check_lora(self.lora))
        if self.fraction > budget:
            raise ValueError(
                f"the selected groups hold {self.fraction:.6g} of all parameters, more than the budget {budget!r}"
            )

    # Frozen with dict fields: equality is by value, hashing is not supported.
    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_groups(
        cls,
        groups: Iterable[str],
        numel: Mapping[str, int],
        appi: Mapping[str, float] | None = None,
        *,
        requires: Mapping[str, Iterable[str]] | None = None,
        lora: Mapping[str, Any] | None = None,
    ) -> Selection:
        """A hand-picked selection (``method="manual"``), e.g. a fixed PEFT recipe.

        Args:
            groups (iterable of str): the group names to train, e.g. ``("bias",)`` (BitFit).
            numel (Mapping[str, int]): parameter count of every candidate group.
            appi (Mapping[str, float], optional): APPI of every candidate group
                (default: all zero, nothing measured)
            requires (Mapping, optional): dependencies the groups must honour
                (default: none)
            lora (Mapping, optional): LoRA settings, as in :meth:`with_lora`
                (default: ``None``)

        Returns:
            Selection: with ``budget`` equal to the selected fraction.
        """
        if appi is None:
            _check_mapping(numel, "numel")
            appi = {k: 0.0 for k in numel}
        groups = (groups,) if isinstance(groups, str) else tuple(groups)
        _, clean_numel = _check_table(appi, numel)
        total = sum(clean_numel.values())
        selected = sum(clean_numel[g] for g in groups if g in clean_numel)
        return cls(
            groups,
            dict(numel),
            dict(appi),
            "manual",
            selected / total,
            requires=requires if requires is not None else {},
            lora=lora,
        )

    @property
    def total_numel(self) -> int:
        """Parameters in all candidate groups."""
        return sum(self.numel.values())

    @property
    def num_selected(self) -> int:
        """Parameters in the selected groups."""
        return sum(self.numel[g] for g in self.groups)

    @property
    def fraction(self) -> float:
        """Selected parameters as a fraction of all candidate parameters."""
        return self.num_selected / self.total_numel

    @property
    def value(self) -> float:
        """Predicted loss reduction ``sum(APPI_k * n_k)`` of the selected groups."""
        return _exact_value(self.appi, self.numel, self.groups)

    @property
    def unprobed(self) -> tuple[str, ...]:
        """Candidate groups whose APPI is exactly 0: no accepted probe measured them (APPI
        sums accepted probes only), or, after :func:`transfer_selection`, the source has no
        measurement for them. They are never selected for their own sake; measure them
        (more steps, a lower ``r2_min``) rather than read them as useless."""
        return tuple(g for g, a in self.appi.items() if a == 0.0)

    @property
    def notes(self) -> tuple[str, ...]:
        """Plain-language remarks on this selection: unprobed groups, groups selected only
        because another requires them, and, for an empty selection of a solver, the
        smallest budget that selects something."""
        return _notes(self)

    def __repr__(self) -> str:
        unprobed = f", unprobed={list(self.unprobed)!r}" if self.unprobed else ""
        return (
            f"Selection(groups={list(self.groups)!r}, {self.num_selected:,} params = "
            f"{100 * self.fraction:.3g}% of {self.total_numel:,}, method={self.method!r}, "
            f"budget={self.budget!r}{unprobed})"
        )

    def with_lora(self, source: Any) -> Selection:
        """A copy that records the LoRA settings of the run, for :meth:`to_peft_config`.

        Args:
            source: a peft ``PeftModel`` (its active adapter's config), a ``LoraConfig``, or
                a dict of LoraConfig settings. Kept: ``target_modules``, ``r``,
                ``lora_alpha``, ``lora_dropout``, ``fan_in_fan_out``, ``task_type`` and the
                other fields that shape the adapters; ``bias`` and ``modules_to_save`` are
                not recorded (they say what trains, which the selection decides).

        Returns:
            Selection: equal to this one but for ``lora``.

        Raises:
            TypeError: ``source`` is none of these.
            ValueError: the config is not a LoRA config, or a dict names ``bias`` or
                ``modules_to_save``.
        """
        return dataclasses.replace(self, lora=_lora_settings(source))

    def to_peft_config(
        self,
        model: nn.Module | None = None,
        *,
        modules_to_save: Iterable[str] | None = None,
        **overrides: Any,
    ) -> peft.LoraConfig:
        """A ``peft.LoraConfig`` that rebuilds this selection's run on a fresh base model.

        From the recorded :attr:`lora` settings (:meth:`with_lora`), plus what the selected
        groups need:

        - ``modules_to_save``: the modules holding the selected ``head``, ``norm`` and
          ``embed`` groups (peft trains a copy of each), named from ``model``: the
          top-most module owning each parameter, as a dotted path in the base model
          (``"classifier"``, ``"bert.encoder.layer.0.output.LayerNorm"``).
        - ``bias``: ``"all"`` when the ``bias`` group (every bias group, at block
          granularity) is selected, else ``"none"``. peft's ``"lora_only"`` (the biases of
          the adapted layers) is no group; pass ``bias="lora_only"`` to choose it.
        - ``layers_to_transform``: the selected blocks, when the selection picks LoRA
          groups of some blocks only (``lora_A@3``).

        peft cannot express every selection: it trains ``lora_A`` and ``lora_B`` together,
        ``bias="all"`` also trains the norm and head biases, and ``task_type="SEQ_CLS"``
        always adds the classifier to ``modules_to_save``. The config builds every module
        the selection trains; call ``apply_selection(peft_model, selection)`` after
        ``peft.get_peft_model`` to train exactly the selected groups.

        Args:
            model (nn.Module, optional): the base model (or the run's peft model) to name
                the modules of selected head/norm/embed groups (default: ``None``)
            modules_to_save (iterable of str, optional): those module names, instead of
                deriving them from ``model`` (default: ``None``)
            **overrides: LoraConfig arguments that replace the recorded and derived ones
                (e.g. ``r=16``, ``bias="lora_only"``, ``target_modules=[...]``).

        Returns:
            peft.LoraConfig: for ``peft.get_peft_model(base_model, config)``.

        Raises:
            ValueError: no LoRA settings recorded or given; head/norm/embed selected without
                ``model`` or ``modules_to_save``; ``others`` selected (base weights are no
                peft setting); only some bias groups selected.
        """
        return _peft_config(self, model, modules_to_save, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-compatible values (a copy)."""
        return _to_dict(self)

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialise to JSON; :meth:`from_json` restores an equal Selection.

        Floats are written with ``repr`` precision, so they round-trip exactly; an infinite
        APPI is written as ``Infinity`` (Python's JSON extension).

        Args:
            indent (int, optional): pretty-print indent (default: ``None``, one line)
        """
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Selection:
        """Restore a Selection written by :meth:`to_json`.

        JSON without ``requires`` or ``lora`` (written before they existed) reads as no
        dependencies and no LoRA settings.

        Args:
            text (str): the JSON text.

        Raises:
            ValueError: not JSON, not a Selection, missing keys, or invalid fields.
        """
        fields = _json_fields(text)
        try:
            return cls(**fields)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid Selection JSON: {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` (indented) to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Selection:
        """Read a Selection written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


# Pickles and reprs name the package, as before it was split into modules.
Selection.__module__ = "adapeft_optim.selection"


def _check_groups(groups: Any, numel: Mapping[str, int]) -> tuple[str, ...]:
    """The selected group names: a sequence of distinct candidate groups."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a sequence of group names, got {type(groups).__name__} {groups!r}")
    groups = tuple(_check_name(g, "groups") for g in groups)
    unknown = [g for g in groups if g not in numel]
    if unknown:
        raise ValueError(f"selected group(s) {unknown} are not among the candidate groups {list(numel)}")
    if len(set(groups)) != len(groups):
        raise ValueError(f"groups lists a group more than once: {list(groups)}")
    return groups


def _check_required_selected(groups: tuple[str, ...], requires: Mapping[str, tuple[str, ...]]) -> None:
    """Every selected group's requirements are selected too."""
    for g in groups:
        missing = [n for n in requires.get(g, ()) if n not in groups]
        if missing:
            raise ValueError(
                f"selected group {g!r} cannot learn without {missing} (requires), which "
                f"are not selected; select them too or leave {g!r} out"
            )
