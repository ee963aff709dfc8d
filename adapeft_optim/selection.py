"""Which parameter groups to train under a parameter budget (DESIGN §2, §6; paper §3.2).

Choosing the groups is a 0-1 knapsack (paper eq. 11-13): group k is an item of weight
``n_k`` (its parameter count) and value ``V_k = APPI_k * n_k`` (its predicted loss
reduction), the capacity is ``budget * sum(n_k)``.

- ``method="greedy"`` (paper §3.2): sort the groups by APPI, the value per parameter, and
  take the largest prefix that fits. The k-th prefix ``A_k`` answers every budget in
  ``[|A_k| / |w|, |A_{k+1}| / |w|)``; it is not always optimal.
- ``method="exact"``: the refined Pareto-optimal answer of eq. (4): the best value within
  the budget and, among the subsets with that value, the one with the fewest parameters.

Everything here works on plain numbers, e.g. a saved APPI table, without an optimizer::

    sel = select_groups({"lora_A": 3.1, "norm": 40.0, "head": 0.2},
                        {"lora_A": 4096, "norm": 512, "head": 8192}, budget=0.4)
    sel.groups                    # ('norm', 'lora_A')
    Selection.from_json(sel.to_json()) == sel
    apply_selection(bigger_model, sel)   # Algorithm 2: transfer by group name

and :func:`save_selected` / :func:`load_selected` store only the trained groups.

Note [exact arithmetic]: the exact solver and every reported value compare the sums of
``APPI_k * n_k`` exactly (the floats are scaled to integers, see :func:`_scaled_items`),
so the answer does not depend on summation order, "equal value" means an exact tie of the
given numbers, and the brute force in the tests (``fractions.Fraction``) must agree with
it bit for bit. Do not replace these sums by float sums.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import operator
import os
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple, Union

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "SELECTION_METHODS",
    "FrontierPoint",
    "Selection",
    "apply_selection",
    "greedy_order",
    "load_selected",
    "pareto_frontier",
    "save_selected",
    "select_groups",
]

SELECTION_METHODS = ("greedy", "exact")

# "manual": a Selection built from hand-picked group names (Selection.from_groups), e.g.
# the fixed PEFT recipes (BitFit = ("bias",)) compared against in the demo.
_SELECTION_KINDS = SELECTION_METHODS + ("manual",)

_JSON_FORMAT = "adapeft_optim.Selection"
_JSON_VERSION = 1
_JSON_KEYS = ("groups", "numel", "appi", "method", "budget")

# Key of the Selection JSON in a save_selected file's safetensors metadata.
_METADATA_KEY = "adapeft_optim.selection"

# The exact solver's Pareto sets hold at most 2**K subsets; this bounds their total size
# over all merge steps. Every table of K <= 20 groups stays under it (at most 2**21 in the
# worst case, equal APPI everywhere); larger tables pass when their frontier is small,
# which is the usual case with measured APPI values.
_MAX_PARETO_WORK = 1 << 22

_NO_ACCEPTED_PROBE = (
    "select() needs at least one accepted probe; run more steps or lower r2_min"
)


# -- validation ----------------------------------------------------------------------------------


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not hasattr(type(budget), "__float__") or isinstance(
        budget, (str, bytes)
    ):
        raise TypeError(
            f"budget must be a number in [0, 1] (a fraction of all parameters, e.g. 0.01 "
            f"for 1%), got {type(budget).__name__} {budget!r}"
        )
    value = float(budget)
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(
            f"Invalid budget: {budget!r}; it is a fraction of all parameters in [0, 1] "
            f"(e.g. 0.01 for 1%)"
        )
    return value


def _check_method(method: Any, allowed: tuple[str, ...] = SELECTION_METHODS) -> str:
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(
            f"Unknown method {method!r}; use one of {', '.join(repr(m) for m in allowed)}"
        )
    return method


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(
            f"group names in {what} must be str, got {type(name).__name__} {name!r}"
        )
    return name


def _check_numel(name: str, n: Any) -> int:
    if isinstance(n, bool):
        raise TypeError(f"numel of group {name!r} must be an int, got bool {n!r}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(
            f"numel of group {name!r} must be an int (a parameter count), got "
            f"{type(n).__name__} {n!r}"
        ) from None
    if count <= 0:
        raise ValueError(
            f"numel of group {name!r} must be a positive parameter count, got {count}; "
            f"drop empty groups before selecting"
        )
    return count


def _check_appi(name: str, a: Any) -> float:
    if isinstance(a, (bool, str, bytes)) or not hasattr(type(a), "__float__"):
        raise TypeError(
            f"APPI of group {name!r} must be a real number, got {type(a).__name__} {a!r}"
        )
    value = float(a)
    if math.isnan(value):
        raise ValueError(
            f"APPI of group {name!r} is NaN; APPI sums accepted probes only and is never "
            f"NaN, so this table is corrupted: fix or drop the entry for {name!r}"
        )
    return value


def _check_table(appi: Any, numel: Any) -> tuple[dict[str, float], dict[str, int]]:
    """Validated copies of an APPI table and its parameter counts, in ``appi``'s order."""
    for arg, label in ((appi, "appi"), (numel, "numel")):
        if not isinstance(arg, Mapping):
            raise TypeError(
                f"{label} must be a mapping group name -> number (e.g. opt.{label}), got "
                f"{type(arg).__name__}"
            )
    if len(appi) == 0:
        raise ValueError("appi is empty: there are no parameter groups to select from")
    names = [_check_name(k, "appi") for k in appi]
    for k in numel:
        _check_name(k, "numel")
    if set(names) != set(numel):
        only_appi = [k for k in names if k not in numel]
        only_numel = [k for k in numel if k not in appi]
        raise ValueError(
            f"appi and numel must have the same group names; only in appi: {only_appi}, "
            f"only in numel: {only_numel}"
        )
    clean_numel = {k: _check_numel(k, numel[k]) for k in names}
    clean_appi = {k: _check_appi(k, appi[k]) for k in names}
    return clean_appi, clean_numel


def _eligible(a: float) -> bool:
    # A group whose APPI is not a positive finite number predicts no loss reduction (or an
    # undefined one), so no budget is ever spent on it.
    return math.isfinite(a) and a > 0.0


# -- greedy order and exact arithmetic ------------------------------------------------------------


def _greedy_key(name: str, a: float, n: int) -> tuple:
    return (not _eligible(a), -a, n, name)


def _greedy_names(appi: dict[str, float], numel: dict[str, int]) -> list[str]:
    return sorted(appi, key=lambda k: _greedy_key(k, appi[k], numel[k]))


def greedy_order(appi: Mapping[str, float], numel: Mapping[str, int]) -> list[str]:
    """Rank the groups as the greedy knapsack visits them: APPI descending.

    Ties go to the group with fewer parameters, then to the smaller name, so the order is
    deterministic. Groups that are never selected (APPI zero, negative or infinite) come
    last, in the same order among themselves.

    Args:
        appi (Mapping[str, float]): APPI per group name (e.g. ``opt.appi``); the value per
            parameter of each knapsack item.
        numel (Mapping[str, int]): parameter count per group name (e.g. ``opt.numel``).

    Returns:
        list[str]: all group names, best first.

    Raises:
        TypeError, ValueError: malformed tables (see :func:`select_groups`).
    """
    clean_appi, clean_numel = _check_table(appi, numel)
    return _greedy_names(clean_appi, clean_numel)


def _scaled_items(
    names: list[str], appi: dict[str, float], numel: dict[str, int]
) -> tuple[list[tuple[int, int]], int]:
    """Items ``(n_k, V_k * scale)`` with integer values, and the common ``scale``.

    A positive float is ``num / 2**e`` exactly, so with ``scale`` the largest such
    denominator every ``APPI_k * n_k * scale`` is an integer and subset sums are exact.
    """
    ratios = [appi[k].as_integer_ratio() for k in names]
    scale = max((den for _, den in ratios), default=1)
    items = [(numel[k], num * (scale // den) * numel[k]) for k, (num, den) in zip(names, ratios)]
    return items, scale


def _exact_value(
    appi: Mapping[str, float], numel: Mapping[str, int], groups: Iterable[str]
) -> float:
    terms = [(appi[g], numel[g]) for g in groups]
    if all(math.isfinite(a) for a, _ in terms):
        return float(sum((Fraction(a) * n for a, n in terms), Fraction(0)))
    return sum(a * n for a, n in terms)


def _capacity(budget: float, total: int) -> int:
    """Largest parameter count ``w`` with ``w / total <= budget``.

    The test is the float division :attr:`Selection.fraction` reports, so a budget copied
    from a frontier point's fraction admits exactly that point.
    """
    w = min(total, max(0, math.floor(budget * total)))
    while w < total and (w + 1) / total <= budget:
        w += 1
    while w > 0 and w / total > budget:
        w -= 1
    return w


def _pareto_sets(
    items: list[tuple[int, int]], capacity: int | None
) -> list[tuple[int, int, int]]:
    """Pareto set of all subsets of ``items`` (weight, value) within ``capacity``.

    Nemhauser-Ullmann: the frontier of items ``0..k`` is the non-dominated part of the
    frontier of ``0..k-1`` together with the same sets plus item ``k``. A set whose part
    among the first k items is dominated is itself dominated, so nothing optimal is lost,
    and the cost is the size of the frontiers, not ``2**K``.

    Entries are ``(weight, -value, -mask)``; item ``k`` is bit ``K-1-k`` of ``mask``, so
    plain tuple order sorts by weight, then value descending, then prefers (among exact
    ties) the set holding the earlier item in greedy order. Returned weights and values
    are strictly increasing; each point carries that canonical set.
    """
    K = len(items)
    front = [(0, 0, 0)]
    work = 0
    for k, (n, value) in enumerate(items):
        bit = 1 << (K - 1 - k)
        # Sets that cannot take item k within the capacity are the heaviest ones.
        stop = (
            len(front)
            if capacity is None
            else bisect.bisect_right(front, (capacity - n, math.inf))
        )
        merged = front + [(w + n, nv - value, nm - bit) for w, nv, nm in front[:stop]]
        work += len(merged)
        if work > _MAX_PARETO_WORK:
            raise ValueError(
                f"the exact knapsack over {K} groups has too many Pareto-optimal subsets "
                f"(more than {_MAX_PARETO_WORK:,} candidates); use method='greedy' (the "
                f"paper's approximation) or coarser groups"
            )
        merged.sort()
        front, best = [], -1
        for entry in merged:
            if -entry[1] > best:
                front.append(entry)
                best = -entry[1]
    return front


def _mask_names(names: list[str], neg_mask: int) -> tuple[str, ...]:
    mask, K = -neg_mask, len(names)
    return tuple(names[k] for k in range(K) if mask >> (K - 1 - k) & 1)


# -- Selection -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
    """The groups chosen to train, with everything needed to explain and reuse the choice.

    A plain, frozen, JSON-serialisable record: make one with :func:`select_groups` (or
    ``opt.select(budget)``), store it with :meth:`to_json` / :meth:`save`, apply it to any
    model grouped the same way with :func:`apply_selection`.

    Args:
        groups (tuple[str, ...]): the selected group names, in greedy order.
        numel (dict[str, int]): parameter count of every candidate group (selected or not).
        appi (dict[str, float]): APPI of every candidate group, the table chosen from.
        method (str): ``"greedy"``, ``"exact"`` or ``"manual"`` (:meth:`from_groups`).
        budget (float): the budget in [0, 1] the selection honours (``fraction <= budget``).

    Raises:
        TypeError, ValueError: inconsistent fields (unknown or repeated selected groups,
            tables with different names, a fraction above the budget, ...).
    """

    groups: tuple[str, ...]
    numel: dict[str, int]
    appi: dict[str, float]
    method: str
    budget: float

    def __post_init__(self) -> None:
        # Snapshot the tables: opt.appi keeps changing after select() returns.
        appi, numel = _check_table(self.appi, self.numel)
        if isinstance(self.groups, (str, bytes)) or not isinstance(self.groups, Iterable):
            raise TypeError(
                f"groups must be a sequence of group names, got {type(self.groups).__name__} "
                f"{self.groups!r}"
            )
        groups = tuple(_check_name(g, "groups") for g in self.groups)
        unknown = [g for g in groups if g not in numel]
        if unknown:
            raise ValueError(
                f"selected group(s) {unknown} are not among the candidate groups {list(numel)}"
            )
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups lists a group more than once: {list(groups)}")
        method = _check_method(self.method, _SELECTION_KINDS)
        budget = _check_budget(self.budget)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "appi", appi)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "budget", budget)
        if self.fraction > budget:
            raise ValueError(
                f"the selected groups hold {self.fraction:.6g} of all parameters, more than "
                f"the budget {budget!r}"
            )

    # Frozen with dict fields: equality is by value, hashing is not supported.
    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_groups(
        cls,
        groups: Iterable[str],
        numel: Mapping[str, int],
        appi: Mapping[str, float] | None = None,
    ) -> Selection:
        """A hand-picked selection (``method="manual"``), e.g. a fixed PEFT recipe.

        Args:
            groups (iterable of str): the group names to train, e.g. ``("bias",)`` (BitFit).
            numel (Mapping[str, int]): parameter count of every candidate group.
            appi (Mapping[str, float], optional): APPI of every candidate group
                (default: all zero, nothing measured)

        Returns:
            Selection: with ``budget`` equal to the selected fraction.
        """
        if appi is None:
            appi = {k: 0.0 for k in numel}
        groups = (groups,) if isinstance(groups, str) else tuple(groups)
        _, clean_numel = _check_table(appi, numel)
        total = sum(clean_numel.values())
        selected = sum(clean_numel[g] for g in groups if g in clean_numel)
        return cls(groups, dict(numel), dict(appi), "manual", selected / total)

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

    def __repr__(self) -> str:
        return (
            f"Selection(groups={list(self.groups)!r}, {self.num_selected:,} params = "
            f"{100 * self.fraction:.3g}% of {self.total_numel:,}, method={self.method!r}, "
            f"budget={self.budget!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-compatible values (a copy)."""
        return {
            "format": _JSON_FORMAT,
            "version": _JSON_VERSION,
            "groups": list(self.groups),
            "numel": dict(self.numel),
            "appi": dict(self.appi),
            "method": self.method,
            "budget": self.budget,
        }

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

        Args:
            text (str): the JSON text.

        Raises:
            ValueError: not JSON, not a Selection, missing keys, or invalid fields.
        """
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(
                f"Selection.from_json expects the JSON text (str), got {type(text).__name__}; "
                f"use Selection.load(path) for a file"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Selection.from_json: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"Selection.from_json: expected a JSON object with keys {list(_JSON_KEYS)}, "
                f"got {type(data).__name__}"
            )
        if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
            raise ValueError(
                f"Selection.from_json: format is {data['format']!r}, not {_JSON_FORMAT!r}"
            )
        if data.get("version", _JSON_VERSION) != _JSON_VERSION:
            raise ValueError(
                f"Selection.from_json: version {data['version']!r} is not supported (this "
                f"adapeft_optim reads version {_JSON_VERSION}); upgrade adapeft_optim"
            )
        missing = [k for k in _JSON_KEYS if k not in data]
        if missing:
            raise ValueError(f"Selection JSON is missing key(s) {missing}")
        if not isinstance(data["groups"], list):
            raise ValueError(
                f"invalid Selection JSON: 'groups' must be a list of names, got "
                f"{data['groups']!r}"
            )
        try:
            return cls(
                groups=tuple(data["groups"]),
                numel=data["numel"],
                appi=data["appi"],
                method=data["method"],
                budget=data["budget"],
            )
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


class FrontierPoint(NamedTuple):
    """One point of a Pareto frontier: a subset of groups, its size and predicted value.

    Attributes:
        fraction (float): the subset's parameters over all candidate parameters.
        value (float): predicted loss reduction ``sum(APPI_k * n_k)``.
        groups (tuple[str, ...]): the subset, in greedy order.
    """

    fraction: float
    value: float
    groups: tuple[str, ...]


# -- selection -----------------------------------------------------------------------------------


def select_groups(
    appi: Mapping[str, float],
    numel: Mapping[str, int],
    budget: float,
    method: str = "greedy",
) -> Selection:
    """Choose the groups to train within ``budget`` (a fraction of all parameters).

    Each group is a knapsack item of weight ``n_k`` and value ``APPI_k * n_k``; the
    capacity is ``budget * sum(n_k)`` over all candidate groups.

    - ``"greedy"`` (paper §3.2): the largest prefix of :func:`greedy_order` that fits.
    - ``"exact"``: the refined Pareto optimum of paper eq. (4): maximal value within the
      budget and, among the subsets with that exact value, the fewest parameters (then the
      subset holding groups earlier in greedy order). Solved exactly for any number of
      groups by Nemhauser-Ullmann dynamic programming over Pareto sets; raises
      ``ValueError`` only if those sets explode (never for up to 20 groups).

    Groups whose APPI is zero, negative or infinite are never selected.

    Args:
        appi (Mapping[str, float]): APPI per group name (e.g. ``opt.appi``).
        numel (Mapping[str, int]): parameter count per group name (e.g. ``opt.numel``).
        budget (float): fraction of all parameters to train, in [0, 1].
        method (str): ``"greedy"`` or ``"exact"`` (default: ``"greedy"``)

    Returns:
        Selection: the selected groups in greedy order, with the tables they came from.

    Raises:
        TypeError: a budget, name, count or APPI of the wrong type.
        ValueError: budget outside [0, 1], unknown method, different names in ``appi`` and
            ``numel``, a non-positive count, a NaN APPI, an empty table, or no positive
            APPI at all (no probe accepted yet).
    """
    budget = _check_budget(budget)
    method = _check_method(method)
    clean_appi, clean_numel = _check_table(appi, numel)
    names = [k for k in _greedy_names(clean_appi, clean_numel) if _eligible(clean_appi[k])]
    if not names:
        raise ValueError(
            f"all APPI values are zero (or not positive) for groups {list(clean_appi)}: "
            f"{_NO_ACCEPTED_PROBE}"
        )
    capacity = _capacity(budget, sum(clean_numel.values()))
    if method == "greedy":
        used, chosen = 0, []
        for name in names:
            used += clean_numel[name]
            if used > capacity:
                break
            chosen.append(name)
        groups = tuple(chosen)
    else:
        items, _ = _scaled_items(names, clean_appi, clean_numel)
        best = _pareto_sets(items, capacity)[-1]
        groups = _mask_names(names, best[2])
    return Selection(groups, clean_numel, clean_appi, method, budget)


def pareto_frontier(
    appi: Mapping[str, float],
    numel: Mapping[str, int],
    method: str = "greedy",
) -> list[FrontierPoint]:
    """Predicted loss reduction against parameter fraction, over subsets of groups.

    - ``"greedy"``: the nested prefixes of :func:`greedy_order` (the paper's frontier
      estimate, Figure 5): the empty set, then one point per selectable group.
    - ``"exact"``: the true Pareto frontier: every subset no other subset beats with at
      most as many parameters and at least as much value (one strictly). Where several
      subsets tie exactly, the point carries the one ``select_groups(method="exact")``
      returns, so ``select_groups(..., budget=p.fraction, method="exact").groups ==
      p.groups`` for every point ``p``.

    Groups whose APPI is zero, negative or infinite are in no subset; a table with no
    positive APPI has the single point ``(0.0, 0.0, ())``.

    Args:
        appi (Mapping[str, float]): APPI per group name (e.g. ``opt.appi``).
        numel (Mapping[str, int]): parameter count per group name (e.g. ``opt.numel``).
        method (str): ``"greedy"`` or ``"exact"`` (default: ``"greedy"``)

    Returns:
        list[FrontierPoint]: sorted by fraction (strictly increasing, as is value),
        starting at ``FrontierPoint(0.0, 0.0, ())``.

    Raises:
        ValueError: as :func:`select_groups`; for ``"exact"`` also more than 20 selectable
            groups whose frontier is too large to enumerate (use ``"greedy"``).
    """
    method = _check_method(method)
    clean_appi, clean_numel = _check_table(appi, numel)
    names = [k for k in _greedy_names(clean_appi, clean_numel) if _eligible(clean_appi[k])]
    total = sum(clean_numel.values())
    items, scale = _scaled_items(names, clean_appi, clean_numel)
    if method == "greedy":
        points = [FrontierPoint(0.0, 0.0, ())]
        weight = value = 0
        for k, (n, v) in enumerate(items):
            weight, value = weight + n, value + v
            points.append(FrontierPoint(weight / total, value / scale, tuple(names[: k + 1])))
        return points
    front = _pareto_sets(items, None)
    return [FrontierPoint(w / total, -nv / scale, _mask_names(names, nm)) for w, nv, nm in front]


# -- models --------------------------------------------------------------------------------------

SelectionLike = Union[Selection, Iterable[str]]


def _selection_names(selection: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selected names, candidate names) of a Selection or a plain list of names."""
    if isinstance(selection, Selection):
        return selection.groups, tuple(selection.numel)
    if isinstance(selection, (str, bytes)) or not isinstance(selection, Iterable):
        raise TypeError(
            f"selection must be a Selection or a list of group names, got "
            f"{type(selection).__name__} {selection!r}"
        )
    names = tuple(_check_name(n, "selection") for n in selection)
    return names, names


def _missing_hint(name: str, base: str) -> str:
    if base in ("lora_A", "lora_B"):
        return f"wrap the model with peft LoRA first (peft.get_peft_model) so it has {base}"
    if base != name:
        return (
            "block-level groups transfer only to models that have that block; select "
            "with granularity='type' to transfer across depths"
        )
    return "group the model the way the selection was made (granularity= or groups=)"


def _model_groups(
    model: nn.Module,
    candidates: tuple[str, ...],
    granularity: str | None,
    groups: Mapping[str, Iterable[Any]] | None,
) -> dict[str, list[Any]]:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if groups is not None:
        if granularity is not None:
            raise ValueError(
                "pass either granularity= (to group the model) or groups= (your own "
                "grouping), not both"
            )
        if not isinstance(groups, Mapping):
            raise TypeError(
                f"groups must be a mapping group name -> parameters, got "
                f"{type(groups).__name__}"
            )
        return {_check_name(k, "groups"): list(v) for k, v in groups.items()}
    from .grouping import base_name, group_parameters

    if granularity is None:
        # The candidates (not only the selected names) tell the granularity: a block-level
        # table that selected only "norm" (ln_f) must not train every LayerNorm.
        granularity = "block" if any(base_name(n) != n for n in candidates) else "type"
    return group_parameters(model, granularity=granularity, include_frozen=True)


def _resolve(
    model: nn.Module,
    selection: Any,
    granularity: str | None,
    groups: Mapping[str, Iterable[Any]] | None,
) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """The selected groups of ``model`` (validated) and id -> name of its parameters."""
    selected, candidates = _selection_names(selection)
    model_groups = _model_groups(model, candidates, granularity, groups)
    missing = [g for g in selected if g not in model_groups]
    if missing:
        from .grouping import base_name

        have = ", ".join(model_groups) or "no groups"
        reasons = "; ".join(
            f"selected group {g!r} is not in this model (it has: {have}); "
            f"{_missing_hint(g, base_name(g))}"
            for g in missing
        )
        raise ValueError(reasons)
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = {g: list(model_groups[g]) for g in selected}
    for g, params in chosen.items():
        for p in params:
            if id(p) not in names:
                raise ValueError(
                    f"group {g!r} holds a tensor of shape {tuple(p.shape)} that is not a "
                    f"parameter of this model; build groups= from this model's parameters"
                )
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(
                    f"group {g!r} holds parameter {names[id(p)]!r} of dtype {p.dtype}, "
                    f"which cannot be trained (quantized weights need an adapter such as "
                    f"peft LoRA); leave {g!r} out of the selection"
                )
    return chosen, names


def apply_selection(
    model: nn.Module,
    selection: SelectionLike,
    *,
    granularity: str | None = None,
    groups: Mapping[str, Iterable[Any]] | None = None,
) -> dict[str, list[nn.Parameter]]:
    """Make exactly the selected groups of ``model`` trainable (Algorithm 2's transfer).

    The model is grouped with ``group_parameters(model, include_frozen=True)`` (or your
    ``groups``), so a selection made on one model applies by name to any model grouped the
    same way: the same model, or a larger one of the same family. Every parameter of a
    selected group gets ``requires_grad=True``, every other parameter ``False``. Nothing
    changes unless the whole selection applies.

    Args:
        model (nn.Module): the model to configure (a peft model for LoRA groups).
        selection (Selection or iterable of str): what to train.
        granularity (str, optional): ``"type"`` or ``"block"`` grouping (default: ``None``,
            ``"block"`` when a candidate group name has a block suffix like ``"norm@3"``,
            else ``"type"``)
        groups (Mapping[str, iterable of Parameter], optional): your own grouping of
            ``model``'s parameters instead (default: ``None``)

    Returns:
        dict[str, list[nn.Parameter]]: the selected groups, name to parameters, ready to
        build the optimizer (``GeNAdaPEFT(AdamW(params), groups=...)``).

    Raises:
        ValueError: a selected group the model does not have (the message says what to
            add), or one holding a parameter that cannot require gradients.
    """
    chosen, _ = _resolve(model, selection, granularity, groups)
    trainable = {id(p) for params in chosen.values() for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return chosen


def save_selected(
    model: nn.Module,
    selection: Selection,
    path: str | os.PathLike,
    *,
    granularity: str | None = None,
    groups: Mapping[str, Iterable[Any]] | None = None,
) -> None:
    """Save only the selected groups' tensors, with the selection, as safetensors.

    Tensors are keyed by their ``model.named_parameters()`` names (a tied weight once, under
    the name ``named_parameters()`` yields); the selection's JSON is in the file's
    metadata. Load with :func:`load_selected` onto a fresh base model.

    Args:
        model (nn.Module): the trained model.
        selection (Selection): the groups that were trained.
        path (str or PathLike): the ``.safetensors`` file to write.
        granularity (str, optional): as in :func:`apply_selection` (default: ``None``)
        groups (Mapping, optional): as in :func:`apply_selection` (default: ``None``)
    """
    from safetensors.torch import save_file

    if not isinstance(selection, Selection):
        raise TypeError(
            f"save_selected needs a Selection (its JSON goes into the file), got "
            f"{type(selection).__name__}; build one with Selection.from_groups(names, numel)"
        )
    chosen, names = _resolve(model, selection, granularity, groups)
    tensors = {
        names[id(p)]: p.detach().to("cpu").contiguous()
        for params in chosen.values()
        for p in params
    }
    save_file(tensors, os.fspath(path), metadata={_METADATA_KEY: selection.to_json()})


def load_selected(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    granularity: str | None = None,
    groups: Mapping[str, Iterable[Any]] | None = None,
) -> Selection:
    """Load a :func:`save_selected` file onto a fresh base model of the same architecture.

    Everything is checked before any parameter is written. ``requires_grad`` is left as is;
    call :func:`apply_selection` with the returned selection to go on training.

    Args:
        model (nn.Module): the base model (wrapped with peft the same way, for LoRA groups).
        path (str or PathLike): the file written by :func:`save_selected`.
        strict (bool): require the file to hold exactly the parameters of the model's
            selected groups; with ``False``, load the tensors whose names the model has and
            ignore the rest (default: ``True``)
        granularity (str, optional): as in :func:`apply_selection` (default: ``None``)
        groups (Mapping, optional): as in :func:`apply_selection` (default: ``None``)

    Returns:
        Selection: the selection stored in the file.

    Raises:
        ValueError: not a save_selected file, missing or unexpected parameter names
            (``strict``), or a shape mismatch.
    """
    import torch
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        metadata = f.metadata() or {}
        keys = list(f.keys())
        if _METADATA_KEY not in metadata:
            raise ValueError(
                f"{os.fspath(path)!r} has no {_METADATA_KEY!r} metadata: it was not written "
                f"by save_selected (read plain safetensors files with "
                f"safetensors.torch.load_file)"
            )
        selection = Selection.from_json(metadata[_METADATA_KEY])
        params = dict(model.named_parameters())
        if strict:
            chosen, names = _resolve(model, selection, granularity, groups)
            expected = [names[id(p)] for ps in chosen.values() for p in ps]
            missing = [n for n in expected if n not in keys]
            expected_set = set(expected)
            unexpected = [n for n in keys if n not in expected_set]
            if missing or unexpected:
                raise ValueError(
                    f"{os.fspath(path)!r} does not match the selected groups "
                    f"{list(selection.groups)} of this model: missing {missing}, "
                    f"unexpected {unexpected}; is it the same architecture (and peft "
                    f"wrapping)? Pass strict=False to load the matching names only"
                )
            to_load = expected
        else:
            to_load = [n for n in keys if n in params]
            if keys and not to_load:
                raise ValueError(
                    f"none of the {len(keys)} tensors in {os.fspath(path)!r} (e.g. "
                    f"{keys[0]!r}) is a parameter of this model; is it the same "
                    f"architecture (and peft wrapping)?"
                )
        tensors = {n: f.get_tensor(n) for n in to_load}
    mismatched = [
        f"{n}: file {tuple(t.shape)} vs model {tuple(params[n].shape)}"
        for n, t in tensors.items()
        if t.shape != params[n].shape
    ]
    if mismatched:
        raise ValueError(
            f"shape mismatch loading {os.fspath(path)!r}: {'; '.join(mismatched)}; the base "
            f"model must have the architecture the file was saved from"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return selection
