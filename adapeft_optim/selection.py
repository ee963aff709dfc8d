"""Which parameter groups to train under a parameter budget (design §2, §6; paper §3.2).

Choosing the groups is a 0-1 knapsack (paper eq. 11-13): group k is an item of weight
``n_k`` (its parameter count) and value ``V_k = APPI_k * n_k`` (its predicted loss
reduction), the capacity is ``budget * sum(n_k)``.

- ``method="greedy"``: walk the groups by APPI, the value per parameter, take each one that
  still fits and skip (but go on after) each one that does not. Not always optimal.
- ``method="prefix"``: the paper's nested-prefix reading (§3.2): the same walk, stopping at
  the first group that does not fit. The k-th prefix ``A_k`` answers every budget in
  ``[|A_k| / |w|, |A_{k+1}| / |w|)``.
- ``method="exact"``: the refined Pareto-optimal answer of eq. (4): the best value within
  the budget and, among the subsets with that value, the one with the fewest parameters.

Some groups cannot learn alone: peft initialises ``lora_B`` to zero, so ``lora_A``'s gradient
is exactly zero until ``lora_B`` moves. :func:`group_dependencies` reads that from the
tensors, and every solver takes it as ``requires=``: a group is selected only together with
all the groups it requires (a knapsack with precedence constraints).

A selection is never empty silently: when nothing fits the budget, :func:`select_groups`
returns the empty selection with an :class:`EmptySelectionWarning` naming the smallest
budget that selects something and what it selects. Groups whose APPI is exactly zero (no
accepted probe) are listed in :attr:`Selection.unprobed`.

Everything here works on plain numbers, e.g. a saved APPI table, without an optimizer::

    sel = select_groups({"lora_A": 3.1, "norm": 40.0, "head": 0.2},
                        {"lora_A": 4096, "norm": 512, "head": 8192}, budget=0.4)
    sel.groups                    # ('norm', 'lora_A')
    Selection.from_json(sel.to_json()) == sel
    apply_selection(bigger_model, sel)   # Algorithm 2: transfer by group name
    transfer_selection(sel, bigger_model, budget=0.01)   # re-solve with the target's sizes

and :func:`save_selected` / :func:`load_selected` store only the trained groups.

Note [exact arithmetic]: the exact solver and every reported value compare the sums of
``APPI_k * n_k`` exactly (the floats are scaled to integers, see :func:`_knapsack`), so the
answer does not depend on summation order, "equal value" means an exact tie of the given
numbers, and the brute force in the tests (``fractions.Fraction``) must agree with it bit
for bit. Do not replace these sums by float sums.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import json
import math
import operator
import os
import warnings
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import peft
    import torch
    from torch import nn

__all__ = [
    "SELECTION_METHODS",
    "EmptySelectionWarning",
    "FrontierPoint",
    "Selection",
    "apply_selection",
    "greedy_order",
    "group_dependencies",
    "load_selected",
    "pareto_frontier",
    "save_selected",
    "select_groups",
    "transfer_selection",
]

SELECTION_METHODS = ("greedy", "prefix", "exact")

# "manual": a Selection built from hand-picked group names (Selection.from_groups), e.g.
# the fixed PEFT recipes (BitFit = ("bias",)) compared against in the demo.
_SELECTION_KINDS = SELECTION_METHODS + ("manual",)

_JSON_FORMAT = "adapeft_optim.Selection"
_JSON_VERSION = 1
_JSON_KEYS = ("groups", "numel", "appi", "method", "budget")
# Written since dependencies and LoRA settings exist; older files lack them (read as none).
_JSON_OPTIONAL_KEYS = ("requires", "lora")

# Key of the Selection JSON in a save_selected file's safetensors metadata.
_METADATA_KEY = "adapeft_optim.selection"

# The exact solver's Pareto sets hold at most 2**K subsets; this bounds their total size
# over all merge steps. Every table of K <= 20 groups stays under it (at most 2**21 in the
# worst case, equal APPI everywhere); larger tables pass when their frontier is small,
# which is the usual case with measured APPI values.
_MAX_PARETO_WORK = 1 << 22

# Groups linked by requires= are solved together: the exact solver enumerates the closed
# subsets of each linked component (2**size candidates). LoRA dependencies link pairs.
_MAX_COMPONENT = 16

_NO_ACCEPTED_PROBE = "select() needs at least one accepted probe; run more steps or lower r2_min"

# peft's LoRA update is B @ A: each factor's gradient is a product with the other, so a
# factor whose partner is all zero has an exactly zero gradient and cannot learn alone.
_LORA_PARTNER = {"lora_A": "lora_B", "lora_B": "lora_A"}

# LoraConfig fields that describe how the adapters are built (Selection.lora). bias= and
# modules_to_save= are left out: they say what trains, which the selection decides.
_LORA_FIELDS = (
    "task_type",
    "target_modules",
    "exclude_modules",
    "r",
    "lora_alpha",
    "lora_dropout",
    "fan_in_fan_out",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
)
_LORA_DERIVED = ("modules_to_save", "bias")

# Group roles peft trains through modules_to_save (a trainable copy of the module).
_SAVED_ROLES = ("head", "norm", "embed")


class EmptySelectionWarning(UserWarning):
    """No group fits the budget: the returned selection is empty.

    The message names the smallest budget that selects something and what it selects, as
    does :attr:`Selection.notes`. ``warnings.simplefilter("error", EmptySelectionWarning)``
    turns it into an exception.
    """


# -- validation ----------------------------------------------------------------------------------


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not hasattr(type(budget), "__float__") or isinstance(budget, (str, bytes)):
        raise TypeError(
            f"budget must be a number in [0, 1] (a fraction of all parameters, e.g. 0.01 "
            f"for 1%), got {type(budget).__name__} {budget!r}"
        )
    value = float(budget)
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(f"Invalid budget: {budget!r}; it is a fraction of all parameters in [0, 1] (e.g. 0.01 for 1%)")
    return value


def _check_method(method: Any, allowed: tuple[str, ...] = SELECTION_METHODS) -> str:
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"Unknown method {method!r}; use one of {', '.join(repr(m) for m in allowed)}")
    return method


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"group names in {what} must be str, got {type(name).__name__} {name!r}")
    return name


def _check_numel(name: str, n: Any) -> int:
    if isinstance(n, bool):
        raise TypeError(f"numel of group {name!r} must be an int, got bool {n!r}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(
            f"numel of group {name!r} must be an int (a parameter count), got {type(n).__name__} {n!r}"
        ) from None
    if count <= 0:
        raise ValueError(
            f"numel of group {name!r} must be a positive parameter count, got {count}; "
            f"drop empty groups before selecting"
        )
    return count


def _check_appi(name: str, a: Any) -> float:
    if isinstance(a, (bool, str, bytes)) or not hasattr(type(a), "__float__"):
        raise TypeError(f"APPI of group {name!r} must be a real number, got {type(a).__name__} {a!r}")
    value = float(a)
    if math.isnan(value):
        raise ValueError(
            f"APPI of group {name!r} is NaN; APPI sums accepted probes only and is never "
            f"NaN, so this table is corrupted: fix or drop the entry for {name!r}"
        )
    return value


def _check_mapping(arg: Any, label: str) -> None:
    if not isinstance(arg, Mapping):
        raise TypeError(f"{label} must be a mapping group name -> number (e.g. opt.{label}), got {type(arg).__name__}")


def _check_table(appi: Any, numel: Any) -> tuple[dict[str, float], dict[str, int]]:
    """Validated copies of an APPI table and its parameter counts, in ``appi``'s order."""
    for arg, label in ((appi, "appi"), (numel, "numel")):
        _check_mapping(arg, label)
    if len(appi) == 0:
        raise ValueError("appi is empty: there are no parameter groups to select from")
    names = [_check_name(k, "appi") for k in appi]
    for k in numel:
        _check_name(k, "numel")
    if set(names) != set(numel):
        only_appi = [k for k in names if k not in numel]
        only_numel = [k for k in numel if k not in appi]
        raise ValueError(
            f"appi and numel must have the same group names; only in appi: {only_appi}, only in numel: {only_numel}"
        )
    clean_numel = {k: _check_numel(k, numel[k]) for k in names}
    clean_appi = {k: _check_appi(k, appi[k]) for k in names}
    return clean_appi, clean_numel


def _check_requires(requires: Any, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Validated ``requires``: only groups that require others, in table order."""
    if requires is None:
        return {}
    if not isinstance(requires, Mapping):
        raise TypeError(
            f"requires must be a mapping group name -> names of the groups it cannot learn "
            f"without (e.g. group_dependencies(groups)), got {type(requires).__name__}"
        )
    known = list(names)
    known_set = set(known)
    clean: dict[str, tuple[str, ...]] = {}
    for group, needed in requires.items():
        _check_name(group, "requires")
        if isinstance(needed, (str, bytes)) or not isinstance(needed, Iterable):
            raise TypeError(
                f"requires[{group!r}] must be a sequence of group names, got "
                f"{type(needed).__name__} {needed!r}; write ({needed!r},) for one group"
            )
        needed = tuple(dict.fromkeys(_check_name(n, "requires") for n in needed))
        unknown = [n for n in (group, *needed) if n not in known_set]
        if unknown:
            raise ValueError(
                f"requires names group(s) {unknown} that are not candidate groups {known}; "
                f"compute it from the same groups (group_dependencies(groups)) or drop "
                f"those entries"
            )
        needed = tuple(n for n in needed if n != group)
        if needed:
            clean[group] = needed
    return {g: clean[g] for g in known if g in clean}


def _plain_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (sets sorted, tuples as lists, enums by value)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"lora setting {where} is {value!r}; settings must be finite")
        return float(value)
    if isinstance(value, Mapping):
        return {_check_name(k, f"lora setting {where}"): _plain_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain_json(v, where) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, where) for v in value]
    raise TypeError(
        f"lora setting {where} must be JSON data (str, number, bool, None, list, dict), got "
        f"{type(value).__name__} {value!r}"
    )


def _check_lora(lora: Any) -> dict[str, Any] | None:
    if lora is None:
        return None
    if not isinstance(lora, Mapping):
        raise TypeError(
            f"lora must be a dict of LoraConfig settings (e.g. {{'target_modules': "
            f"['query', 'value'], 'r': 8}}) or None, got {type(lora).__name__}; use "
            f"Selection.with_lora(peft_model) to record a model's settings"
        )
    derived = [k for k in _LORA_DERIVED if k in lora]
    if derived:
        raise ValueError(
            f"lora settings must not hold {derived}: to_peft_config derives them from the "
            f"selected groups; leave them out (or pass them to to_peft_config to override)"
        )
    return {_check_name(k, "lora"): _plain_json(v, repr(k)) for k, v in lora.items()}


def _eligible(a: float) -> bool:
    # A group whose APPI is not a positive finite number predicts no loss reduction (or an
    # undefined one), so no budget is ever spent on it for its own sake.
    return math.isfinite(a) and a > 0.0


# -- greedy order and exact arithmetic ------------------------------------------------------------


def _greedy_key(name: str, a: float, n: int) -> tuple:
    return (not _eligible(a), -a, n, name)


def _greedy_names(appi: dict[str, float], numel: dict[str, int]) -> list[str]:
    return sorted(appi, key=lambda k: _greedy_key(k, appi[k], numel[k]))


def greedy_order(appi: Mapping[str, float], numel: Mapping[str, int]) -> list[str]:
    """Rank the groups as the greedy knapsack visits them: APPI descending.

    Ties go to the group with fewer parameters, then to the smaller name, so the order is
    deterministic. Groups that are never selected for their own sake (APPI zero, negative
    or infinite) come last, in the same order among themselves.

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


def _exact_value(appi: Mapping[str, float], numel: Mapping[str, int], groups: Iterable[str]) -> float:
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


def _closure(group: str, requires: Mapping[str, tuple[str, ...]]) -> set[str]:
    """``group`` and every group it requires, directly or through others."""
    seen, stack = {group}, [group]
    while stack:
        for needed in requires.get(stack.pop(), ()):
            if needed not in seen:
                seen.add(needed)
                stack.append(needed)
    return seen


class _Knapsack(NamedTuple):
    """A validated table prepared for the solvers.

    ``names``: every group that can be part of a selection, in greedy order (item ``k`` is
    bit ``K-1-k`` of a subset mask); ``starts``: the groups selectable for their own sake
    (positive finite APPI, nothing of undefined value required), in greedy order, each
    with its ``closures`` entry (itself and all it requires, greedy order); ``value``:
    ``APPI_k * n_k * scale`` as exact integers.
    """

    names: list[str]
    starts: list[str]
    closures: dict[str, tuple[str, ...]]
    requires: dict[str, tuple[str, ...]]
    weight: dict[str, int]
    value: dict[str, int]
    scale: int
    total: int


def _knapsack(appi: dict[str, float], numel: dict[str, int], requires: dict[str, tuple[str, ...]]) -> _Knapsack:
    order = _greedy_names(appi, numel)
    rank = {g: i for i, g in enumerate(order)}
    starts: list[str] = []
    closures: dict[str, tuple[str, ...]] = {}
    member: set[str] = set()
    for g in order:
        if not _eligible(appi[g]):
            continue
        closure = _closure(g, requires)
        # A required group of infinite APPI has no defined value: g is never selectable.
        if not all(math.isfinite(appi[h]) for h in closure):
            continue
        starts.append(g)
        closures[g] = tuple(sorted(closure, key=rank.__getitem__))
        member |= closure
    names = [g for g in order if g in member]
    # A finite float is num / 2**e exactly, so with scale the largest such denominator
    # every APPI_k * n_k * scale is an integer and subset sums are exact.
    ratios = {g: appi[g].as_integer_ratio() for g in names}
    scale = max((den for _, den in ratios.values()), default=1)
    value = {g: num * (scale // den) * numel[g] for g, (num, den) in ratios.items()}
    return _Knapsack(
        names,
        starts,
        closures,
        requires,
        {g: numel[g] for g in names},
        value,
        scale,
        sum(numel.values()),
    )


def _components(ks: _Knapsack) -> list[list[str]]:
    """The groups linked by ``requires`` (undirected), each in greedy order."""
    parent = {g: g for g in ks.names}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for g in ks.names:
        for needed in ks.requires.get(g, ()):
            parent[root(g)] = root(needed)
    components: dict[str, list[str]] = {}
    for g in ks.names:
        components.setdefault(root(g), []).append(g)
    return list(components.values())


def _options(ks: _Knapsack, component: list[str]) -> list[tuple[int, int, int]]:
    """Every non-empty subset of ``component`` that holds what its groups require, as
    ``(weight, value, mask)``."""
    K = len(ks.names)
    index = {g: k for k, g in enumerate(ks.names)}
    if len(component) == 1:
        g = component[0]
        return [(ks.weight[g], ks.value[g], 1 << (K - 1 - index[g]))]
    if len(component) > _MAX_COMPONENT:
        raise ValueError(
            f"{len(component)} groups ({', '.join(component[:4])}, ...) are linked by "
            f"requires=; the exact knapsack enumerates 2**{len(component)} ways to take part "
            f"of them; use method='greedy' or fewer dependencies"
        )
    options = []
    for sub in range(1, 1 << len(component)):
        chosen = {g for i, g in enumerate(component) if sub >> i & 1}
        if all(n in chosen for g in chosen for n in ks.requires.get(g, ())):
            options.append(
                (
                    sum(ks.weight[g] for g in chosen),
                    sum(ks.value[g] for g in chosen),
                    sum(1 << (K - 1 - index[g]) for g in chosen),
                )
            )
    return options


def _pareto_sets(ks: _Knapsack, capacity: int | None) -> list[tuple[int, int, int]]:
    """Pareto set of all selectable subsets within ``capacity``.

    Nemhauser-Ullmann over the linked components: the frontier after components ``0..c``
    is the non-dominated part of the frontier after ``0..c-1`` together with the same sets
    plus each option of component ``c`` (at most one option per component: the options
    are subsets of the same groups). A set whose part in the first components is
    dominated is itself dominated, so nothing optimal is lost, and the cost is the size of
    the frontiers, not ``2**K``. Without ``requires`` every component is one group.

    Entries are ``(weight, -value, -mask)``, so plain tuple order sorts by weight, then
    value descending, then prefers (among exact ties) the set holding the earlier group in
    greedy order. Returned weights and values are strictly increasing; each point carries
    that canonical set.
    """
    front = [(0, 0, 0)]
    work = 0
    for component in _components(ks):
        merged = list(front)
        for weight, value, mask in _options(ks, component):
            # Sets that cannot take this option within the capacity are the heaviest ones.
            stop = len(front) if capacity is None else bisect.bisect_right(front, (capacity - weight, math.inf))
            merged += [(w + weight, nv - value, nm - mask) for w, nv, nm in front[:stop]]
        work += len(merged)
        if work > _MAX_PARETO_WORK:
            raise ValueError(
                f"the exact knapsack over {len(ks.names)} groups has too many Pareto-optimal "
                f"subsets (more than {_MAX_PARETO_WORK:,} candidates); use method='greedy' "
                f"(the paper's approximation) or coarser groups"
            )
        merged.sort()
        front, best = [], None
        for entry in merged:
            if best is None or -entry[1] > best:
                front.append(entry)
                best = -entry[1]
    return front


def _mask_names(names: list[str], neg_mask: int) -> tuple[str, ...]:
    mask, K = -neg_mask, len(names)
    return tuple(names[k] for k in range(K) if mask >> (K - 1 - k) & 1)


def _walk(ks: _Knapsack, capacity: int | None, stop_at_first: bool) -> list[tuple[tuple[str, ...], int, int]]:
    """The greedy walk: items ``(groups, weight, value)`` in the order they are taken.

    Each group, by APPI, is taken together with the groups it requires and has not taken
    yet, when they all fit; otherwise the walk skips it and goes on, or stops
    (``stop_at_first``, the nested-prefix reading).
    """
    chosen: set[str] = set()
    items = []
    used = 0
    for g in ks.starts:
        if g in chosen:
            continue
        item = tuple(h for h in ks.closures[g] if h not in chosen)
        weight = sum(ks.weight[h] for h in item)
        value = sum(ks.value[h] for h in item)
        if value <= 0:  # what it drags along outweighs it: never worth any budget
            continue
        if capacity is not None and used + weight > capacity:
            if stop_at_first:
                break
            continue
        chosen.update(item)
        used += weight
        items.append((item, weight, value))
    return items


def _solve(ks: _Knapsack, capacity: int, method: str) -> tuple[str, ...]:
    if method == "exact":
        return _mask_names(ks.names, _pareto_sets(ks, capacity)[-1][2])
    chosen = {g for item, _, _ in _walk(ks, capacity, method == "prefix") for g in item}
    return tuple(g for g in ks.names if g in chosen)


def _smallest_weight(ks: _Knapsack, method: str) -> int | None:
    """Fewest parameters at which ``method`` selects something (``None``: never)."""
    if method == "exact":
        # A subset of positive value has a part of positive value in some linked
        # component, and that part holds what it requires: the lightest such part is the
        # lightest useful subset.
        weights = [w for component in _components(ks) for w, v, _ in _options(ks, component) if v > 0]
        return min(weights, default=None)
    first_items = []
    for g in ks.starts:
        item = ks.closures[g]
        if sum(ks.value[h] for h in item) > 0:
            first_items.append(sum(ks.weight[h] for h in item))
    if not first_items:
        return None
    # prefix stops at the first item that does not fit; greedy takes any that fits.
    return first_items[0] if method == "prefix" else min(first_items)


def _nothing_selectable(appi: Mapping[str, float], requires: Mapping[str, Any]) -> str:
    positive = [g for g, a in appi.items() if _eligible(a)]
    return (
        f"no group can be selected at any budget: every group with a positive APPI "
        f"({positive}) requires groups of infinite APPI or of a negative value at least as "
        f"large (requires={dict(requires)}); fix the APPI table or the requires mapping"
    )


def _empty_note(selection: Selection) -> str:
    """Why ``selection`` (of a solver) is empty and the smallest budget that is not."""
    ks = _knapsack(selection.appi, selection.numel, selection.requires)
    weight = _smallest_weight(ks, selection.method)
    if weight is None:
        return _nothing_selectable(selection.appi, selection.requires)
    fits = _solve(ks, weight, selection.method)
    note = (
        f"no group fits budget={selection.budget!r} (method={selection.method!r}), so the "
        f"selection is empty; the smallest budget that selects something is "
        f"{weight / ks.total!r} ({'+'.join(fits)}: {weight:,} of {ks.total:,} parameters): "
        f"raise the budget to at least that"
    )
    if selection.unprobed:
        note += f"; groups with APPI 0 (no accepted probe) were not considered: {list(selection.unprobed)}"
    return note


# -- Selection -----------------------------------------------------------------------------------


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
        if isinstance(self.groups, (str, bytes)) or not isinstance(self.groups, Iterable):
            raise TypeError(
                f"groups must be a sequence of group names, got {type(self.groups).__name__} {self.groups!r}"
            )
        groups = tuple(_check_name(g, "groups") for g in self.groups)
        unknown = [g for g in groups if g not in numel]
        if unknown:
            raise ValueError(f"selected group(s) {unknown} are not among the candidate groups {list(numel)}")
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups lists a group more than once: {list(groups)}")
        method = _check_method(self.method, _SELECTION_KINDS)
        budget = _check_budget(self.budget)
        requires = _check_requires(self.requires, numel)
        for g in groups:
            missing = [n for n in requires.get(g, ()) if n not in groups]
            if missing:
                raise ValueError(
                    f"selected group {g!r} cannot learn without {missing} (requires), which "
                    f"are not selected; select them too or leave {g!r} out"
                )
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
        notes = []
        if self.unprobed:
            notes.append(
                f"APPI 0 (no accepted probe) for {list(self.unprobed)}: never selected for "
                f"their own sake; run more steps (or lower r2_min) to measure them"
            )
        for g in self.groups:
            if g in self.requires:
                notes.append(f"{g!r} is selected together with {list(self.requires[g])}: it cannot learn without them")
        if not self.groups and self.method != "manual":
            if any(_eligible(a) for a in self.appi.values()):
                notes.append(_empty_note(self))
        return tuple(notes)

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
        if isinstance(source, Mapping):
            return dataclasses.replace(self, lora=dict(source))
        configs = getattr(source, "peft_config", None)
        config = source
        if isinstance(configs, Mapping):  # a PeftModel: the active adapter's config
            adapter = getattr(source, "active_adapter", "default")
            if not isinstance(adapter, str) or adapter not in configs:
                raise ValueError(
                    f"cannot tell the active adapter of this peft model (active_adapter="
                    f"{adapter!r}, adapters {list(configs)}); pass its LoraConfig instead"
                )
            config = configs[adapter]
        to_dict = getattr(config, "to_dict", None)
        if not callable(to_dict):
            raise TypeError(
                f"with_lora expects a peft model, a LoraConfig or a dict of LoraConfig "
                f"settings, got {type(source).__name__}"
            )
        settings = to_dict()
        peft_type = settings.get("peft_type")
        peft_type = peft_type.value if isinstance(peft_type, enum.Enum) else peft_type
        if peft_type not in (None, "LORA"):
            raise ValueError(
                f"with_lora records LoRA settings, got a {peft_type} config; to_peft_config builds a LoraConfig only"
            )
        return dataclasses.replace(self, lora={k: settings[k] for k in _LORA_FIELDS if k in settings})

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
        try:
            import peft
        except ImportError:  # pragma: no cover - peft is a dependency of the LoRA groups
            raise ImportError("to_peft_config needs peft: pip install peft") from None
        from .grouping import base_name

        roles = {base_name(g) for g in self.groups}
        if "others" in roles:
            others = [g for g in self.groups if base_name(g) == "others"]
            raise ValueError(
                f"selected group(s) {others} are base weights, which a LoraConfig cannot "
                f"train (only adapters, modules_to_save and biases); train this selection "
                f"with apply_selection(model, selection) instead"
            )
        settings = dict(self.lora or {})
        if "target_modules" not in settings and "target_modules" not in overrides:
            if any(base_name(g) in _LORA_PARTNER for g in self.numel):
                raise ValueError(
                    "this Selection records no LoRA settings (target_modules, r, ...): record "
                    "them with selection.with_lora(peft_model) (or a LoraConfig or dict) "
                    "before saving it, or pass target_modules=... to to_peft_config"
                )
            raise ValueError(
                f"this Selection has no LoRA groups (candidates {list(self.numel)}) and a "
                f"LoraConfig needs adapters: train it with apply_selection(model, selection) "
                f"on the plain model, or pass target_modules=... to add LoRA adapters"
            )
        lora_selected = [g for g in self.groups if base_name(g) in _LORA_PARTNER]
        if lora_selected and all(base_name(g) != g for g in lora_selected):
            blocks = {g.partition("@")[2] for g in lora_selected}
            candidates = {g.partition("@")[2] for g in self.numel if base_name(g) in _LORA_PARTNER}
            if blocks < candidates and all(b.isdigit() for b in blocks):
                settings["layers_to_transform"] = sorted(int(b) for b in blocks)
        bias_groups = [g for g in self.numel if base_name(g) == "bias"]
        bias_selected = [g for g in self.groups if base_name(g) == "bias"]
        if not bias_selected:
            settings["bias"] = "none"
        elif len(bias_selected) == len(bias_groups):
            settings["bias"] = "all"
        elif "bias" not in overrides:
            raise ValueError(
                f"selected bias groups {bias_selected} are only part of the biases "
                f"({bias_groups}), and peft's bias= trains all biases or none: select at "
                f"granularity='type', or pass bias='all' and call apply_selection(peft_model, "
                f"selection) after get_peft_model"
            )
        saved = [g for g in self.groups if base_name(g) in _SAVED_ROLES]
        if modules_to_save is not None:
            if isinstance(modules_to_save, str) or not isinstance(modules_to_save, Iterable):
                raise TypeError(
                    f"modules_to_save must be a list of module names, got "
                    f"{type(modules_to_save).__name__} {modules_to_save!r}"
                )
            names = [_check_name(n, "modules_to_save") for n in modules_to_save]
        elif saved:
            if model is None:
                raise ValueError(
                    f"selected group(s) {saved} are trained in peft through "
                    f"modules_to_save, whose module names come from the model: pass model= "
                    f"(the base model or the peft model) or modules_to_save=[...]"
                )
            names = _saved_module_names(model, self, saved)
        else:
            names = []
        settings["modules_to_save"] = names or None
        settings.update(overrides)
        return peft.LoraConfig(**settings)

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
            "requires": {g: list(r) for g, r in self.requires.items()},
            "lora": json.loads(json.dumps(self.lora)),
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

        JSON without ``requires`` or ``lora`` (written before they existed) reads as no
        dependencies and no LoRA settings.

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
                f"Selection.from_json: expected a JSON object with keys {list(_JSON_KEYS)}, got {type(data).__name__}"
            )
        if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
            raise ValueError(f"Selection.from_json: format is {data['format']!r}, not {_JSON_FORMAT!r}")
        if data.get("version", _JSON_VERSION) != _JSON_VERSION:
            raise ValueError(
                f"Selection.from_json: version {data['version']!r} is not supported (this "
                f"adapeft_optim reads version {_JSON_VERSION}); upgrade adapeft_optim"
            )
        missing = [k for k in _JSON_KEYS if k not in data]
        if missing:
            raise ValueError(f"Selection JSON is missing key(s) {missing}")
        if not isinstance(data["groups"], list):
            raise ValueError(f"invalid Selection JSON: 'groups' must be a list of names, got {data['groups']!r}")
        requires = data.get("requires") or {}
        if not isinstance(requires, dict) or not all(isinstance(v, list) for v in requires.values()):
            raise ValueError(
                f"invalid Selection JSON: 'requires' must map group names to lists of names, got {requires!r}"
            )
        try:
            return cls(
                groups=tuple(data["groups"]),
                numel=data["numel"],
                appi=data["appi"],
                method=data["method"],
                budget=data["budget"],
                requires=requires,
                lora=data.get("lora"),
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


# -- dependencies --------------------------------------------------------------------------------


def group_dependencies(
    groups: Mapping[str, Iterable[torch.Tensor]],
) -> dict[str, tuple[str, ...]]:
    """Which groups cannot learn without which, read from the current tensors.

    peft's LoRA adds ``B @ A`` to a layer, so ``A``'s gradient is a product with ``B`` and
    vice versa: a factor whose partner is exactly zero gets an exactly zero gradient.
    peft initialises ``lora_B`` to zero (and ``lora_embedding_A`` for embeddings), so on a
    fresh adapter ``lora_A`` requires ``lora_B``. Once the partner has moved (after
    training, or with a non-zero init) the factor learns alone and there is no dependency.

    Pairs: ``lora_A`` with ``lora_B``, and at block granularity ``lora_A@3`` with
    ``lora_B@3``. A group requires its partner when every tensor of the partner is zero;
    when both are zero they require each other (selected together, neither learns).

    Args:
        groups (Mapping[str, iterable of Tensor]): group name -> parameters, e.g.
            ``group_parameters(model)`` or ``opt.groups``.

    Returns:
        dict[str, tuple[str, ...]]: group -> the groups it requires, only for groups that
        require something, in ``groups``' order; the ``requires=`` of :func:`select_groups`.

    Raises:
        TypeError: ``groups`` is not a mapping of tensors.
    """
    import torch

    from .grouping import base_name

    if not isinstance(groups, Mapping):
        raise TypeError(
            f"group_dependencies expects a mapping group name -> parameters such as "
            f"group_parameters(model), got {type(groups).__name__}"
        )
    tensors: dict[str, list[torch.Tensor]] = {}
    for name, params in groups.items():
        _check_name(name, "groups")
        if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
            raise TypeError(f"groups[{name!r}] must be a list of tensors, got {type(params).__name__}")
        tensors[name] = list(params)
        for p in tensors[name]:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"groups[{name!r}] holds a {type(p).__name__}, not a tensor; pass group_parameters(model)"
                )
    requires = {}
    for name in tensors:
        role = base_name(name)
        if role not in _LORA_PARTNER:
            continue
        partner = _LORA_PARTNER[role] + name[len(role) :]
        partner_tensors = tensors.get(partner)
        if partner_tensors and not any(bool(t.detach().any()) for t in partner_tensors):
            requires[name] = (partner,)
    return requires


# -- selection -----------------------------------------------------------------------------------


def _select(
    appi: dict[str, float],
    numel: dict[str, int],
    budget: float,
    method: str,
    requires: dict[str, tuple[str, ...]],
    stacklevel: int,
) -> Selection:
    """:func:`select_groups` on validated arguments."""
    if not any(_eligible(a) for a in appi.values()):
        raise ValueError(f"all APPI values are zero (or not positive) for groups {list(appi)}: {_NO_ACCEPTED_PROBE}")
    ks = _knapsack(appi, numel, requires)
    groups = _solve(ks, _capacity(budget, ks.total), method)
    if not groups and _smallest_weight(ks, method) is None:
        raise ValueError(_nothing_selectable(appi, requires))
    selection = Selection(groups, numel, appi, method, budget, requires=requires)
    if not groups:
        warnings.warn(_empty_note(selection), EmptySelectionWarning, stacklevel=stacklevel + 1)
    return selection


def select_groups(
    appi: Mapping[str, float],
    numel: Mapping[str, int],
    budget: float,
    method: str = "greedy",
    *,
    requires: Mapping[str, Iterable[str]] | None = None,
) -> Selection:
    """Choose the groups to train within ``budget`` (a fraction of all parameters).

    Each group is a knapsack item of weight ``n_k`` and value ``APPI_k * n_k``; the
    capacity is ``budget * sum(n_k)`` over all candidate groups.

    - ``"greedy"``: walk :func:`greedy_order`; take each group that still fits, skip each
      one that does not and go on.
    - ``"prefix"`` (the paper's reading, §3.2): the same walk, stopping at the first group
      that does not fit: the largest nested prefix that fits.
    - ``"exact"``: the refined Pareto optimum of paper eq. (4): maximal value within the
      budget and, among the subsets with that exact value, the fewest parameters (then the
      subset holding groups earlier in greedy order). Solved exactly for any number of
      groups by Nemhauser-Ullmann dynamic programming over Pareto sets; raises
      ``ValueError`` only if those sets explode (never for up to 20 groups).

    With ``requires`` a group is selectable only together with every group it requires
    (directly or through others): the walks take it with them as one item when they all
    fit (and skip it, or stop, when not); ``"exact"`` maximises over the subsets that
    hold what they require. A required group's own APPI counts in the value.

    Groups whose APPI is zero, negative or infinite are never selected for their own sake
    (only as required by another); those with APPI exactly zero are listed in
    :attr:`Selection.unprobed`. When no group fits the budget, the empty selection comes
    with an :class:`EmptySelectionWarning` naming the smallest budget that selects
    something (also in :attr:`Selection.notes`).

    Args:
        appi (Mapping[str, float]): APPI per group name (e.g. ``opt.appi``).
        numel (Mapping[str, int]): parameter count per group name (e.g. ``opt.numel``).
        budget (float): fraction of all parameters to train, in [0, 1].
        method (str): ``"greedy"``, ``"prefix"`` or ``"exact"`` (default: ``"greedy"``)
        requires (Mapping[str, iterable of str], optional): group -> the groups it cannot
            learn without, e.g. :func:`group_dependencies` (default: ``None``, none)

    Returns:
        Selection: the selected groups in greedy order, with the tables they came from.

    Raises:
        TypeError: a budget, name, count, APPI or requires entry of the wrong type.
        ValueError: budget outside [0, 1], unknown method, different names in ``appi`` and
            ``numel``, a non-positive count, a NaN APPI, an empty table, ``requires``
            naming unknown groups, no positive APPI at all (no probe accepted yet), or no
            group selectable at any budget.

    Warns:
        EmptySelectionWarning: nothing fits ``budget``.
    """
    budget = _check_budget(budget)
    method = _check_method(method)
    clean_appi, clean_numel = _check_table(appi, numel)
    clean_requires = _check_requires(requires, clean_appi)
    return _select(clean_appi, clean_numel, budget, method, clean_requires, stacklevel=2)


def pareto_frontier(
    appi: Mapping[str, float],
    numel: Mapping[str, int],
    method: str = "greedy",
    *,
    requires: Mapping[str, Iterable[str]] | None = None,
) -> list[FrontierPoint]:
    """Predicted loss reduction against parameter fraction, over subsets of groups.

    - ``"greedy"`` or ``"prefix"``: the nested prefixes of the greedy walk (the paper's
      frontier estimate, Figure 5): the empty set, then one point per item taken (a group
      with the groups it requires). Both methods select exactly a point's groups at its
      fraction.
    - ``"exact"``: the true Pareto frontier: every subset (holding what it requires) no
      other beats with at most as many parameters and at least as much value (one
      strictly). Where several subsets tie exactly, the point carries the one
      ``select_groups(method="exact")`` returns, so ``select_groups(...,
      budget=p.fraction, method="exact").groups == p.groups`` for every point ``p``.

    Groups whose APPI is zero, negative or infinite are in no subset unless required; a
    table with no positive APPI has the single point ``(0.0, 0.0, ())``.

    Args:
        appi (Mapping[str, float]): APPI per group name (e.g. ``opt.appi``).
        numel (Mapping[str, int]): parameter count per group name (e.g. ``opt.numel``).
        method (str): ``"greedy"``, ``"prefix"`` or ``"exact"`` (default: ``"greedy"``)
        requires (Mapping[str, iterable of str], optional): as in :func:`select_groups`
            (default: ``None``)

    Returns:
        list[FrontierPoint]: sorted by fraction (strictly increasing, as is value),
        starting at ``FrontierPoint(0.0, 0.0, ())``.

    Raises:
        ValueError: as :func:`select_groups`; for ``"exact"`` also more than 20 selectable
            groups whose frontier is too large to enumerate (use ``"greedy"``).
    """
    method = _check_method(method)
    clean_appi, clean_numel = _check_table(appi, numel)
    ks = _knapsack(clean_appi, clean_numel, _check_requires(requires, clean_appi))
    if method != "exact":
        points = [FrontierPoint(0.0, 0.0, ())]
        weight = value = 0
        chosen: set[str] = set()
        for item, w, v in _walk(ks, None, stop_at_first=True):
            weight, value = weight + w, value + v
            chosen.update(item)
            groups = tuple(g for g in ks.names if g in chosen)
            points.append(FrontierPoint(weight / ks.total, value / ks.scale, groups))
        return points
    return [
        FrontierPoint(w / ks.total, -nv / ks.scale, _mask_names(ks.names, nm)) for w, nv, nm in _pareto_sets(ks, None)
    ]


# -- transfer ------------------------------------------------------------------------------------


def _target_table(
    target: Any, source_names: Iterable[str], granularity: str | None
) -> tuple[dict[str, int], dict[str, list[Any]] | None]:
    """(numel per group, the groups when ``target`` has tensors) of a transfer target."""
    from torch import nn

    from .grouping import base_name, group_parameters

    if isinstance(target, nn.Module):
        if granularity is None:
            granularity = "block" if any(base_name(n) != n for n in source_names) else "type"
        groups = group_parameters(target, granularity=granularity, include_frozen=True)
    elif isinstance(target, Mapping):
        if granularity is not None:
            raise ValueError(
                "granularity= groups a model; the target is already a table (pass the model itself to group it)"
            )
        if len(target) == 0:
            raise ValueError("the target table is empty: there are no groups to select from")
        counts = [not isinstance(v, bool) and hasattr(type(v), "__index__") for v in target.values()]
        if all(counts):
            return dict(target), None
        if any(counts):
            raise TypeError(
                "target must map every group to a parameter count (numel) or every group to "
                "its parameters (groups), not a mix"
            )
        groups = {}
        for name, params in target.items():
            if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
                raise TypeError(
                    f"target[{_check_name(name, 'target')!r}] must be a parameter count or a "
                    f"list of parameters, got {type(params).__name__} {params!r}"
                )
            groups[name] = list(params)
    else:
        raise TypeError(
            f"target must be a model, a mapping group -> parameters (group_parameters) or a "
            f"mapping group -> parameter count (opt.numel), got {type(target).__name__}"
        )
    import torch

    for name, params in groups.items():
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"target[{name!r}] holds a {type(p).__name__}, not a tensor; pass "
                    f"group_parameters(model) or a mapping group -> parameter count"
                )
    numel = {name: sum(int(p.numel()) for p in params) for name, params in groups.items()}
    return numel, groups


def _transferred_appi(
    target_names: Iterable[str], appi: dict[str, float], numel: dict[str, int] | None
) -> dict[str, float]:
    """The source's per-parameter influence for each target group (0.0: unmeasured)."""
    from .grouping import base_name

    target_names = list(target_names)
    source_by_block = any(base_name(s) != s for s in appi)
    target_by_block = any(base_name(t) != t for t in target_names)
    transferred = {}
    for name in target_names:
        role = base_name(name)
        if source_by_block and not target_by_block:
            # A type-level group of a block-level source (whose plain "norm" is only the
            # part outside the blocks): the parameter-weighted mean of the role's measured
            # groups is its influence per parameter.
            family = [s for s in appi if base_name(s) == role]
            measured = [s for s in family if appi[s] != 0.0]
            if not measured:
                transferred[name] = 0.0
                continue
            if numel is None:
                raise ValueError(
                    f"target group {name!r} is split by block in the source ({family[:3]}"
                    f"{', ...' if len(family) > 3 else ''}); averaging their APPI per "
                    f"parameter needs their sizes: pass the source Selection or "
                    f"source_numel=, or group the target with granularity='block'"
                )
            if not all(math.isfinite(appi[s]) for s in measured):
                transferred[name] = math.inf  # undefined: never selected
                continue
            weighted = sum((Fraction(appi[s]) * numel[s] for s in measured), Fraction(0))
            transferred[name] = float(weighted / sum(numel[s] for s in measured))
        elif name in appi:
            transferred[name] = appi[name]
        elif not source_by_block and role in appi:
            # A block of a block-level target, the role measured as a whole: same influence.
            transferred[name] = appi[role]
        else:
            # A block the source does not have (a deeper target), a role it never measured.
            transferred[name] = 0.0
    return transferred


def transfer_selection(
    source_appi: Selection | Mapping[str, float],
    target: nn.Module | Mapping[str, Any],
    budget: float,
    method: str = "greedy",
    *,
    requires: Mapping[str, Iterable[str]] | None = None,
    source_numel: Mapping[str, int] | None = None,
    granularity: str | None = None,
) -> Selection:
    """Re-solve the knapsack on a target model with the source's influence per parameter.

    Algorithm 2 measures APPI on a small model and trains a larger one. APPI is an
    influence per parameter, so the target's item ``k`` has value ``APPI_k * n_k(target)``:
    the groups that pay off at a budget can differ from the source's (an embedding is a
    larger share of a small model). :func:`apply_selection` transfers the source's group
    names as they are; this re-solves with the target's sizes.

    A target group takes the source's APPI of the same name, across granularities by
    role: when the source is split by block (``norm@i``, and ``norm`` for the part
    outside the blocks) and the target is not, the target's ``norm`` takes the
    parameter-weighted mean over the source's measured ``norm`` groups; when the target
    is split by block and the source is not, every ``norm@i`` takes the source's
    ``norm``. Any other target group (a block the source does not have, a role it never
    measured) gets APPI 0 and is listed in :attr:`Selection.unprobed`.

    Args:
        source_appi (Selection or Mapping[str, float]): the source's APPI table
            (``opt.appi``), or a Selection made from it (its ``numel`` then serves as
            ``source_numel``).
        target (nn.Module or Mapping): the target model (grouped with
            ``group_parameters(target, include_frozen=True)``, like
            :func:`apply_selection`), its groups (name -> parameters), or its parameter
            counts (name -> numel).
        budget (float): fraction of the target's candidate parameters, in [0, 1].
        method (str): ``"greedy"``, ``"prefix"`` or ``"exact"`` (default: ``"greedy"``)
        requires (Mapping, optional): the target's dependencies (default: ``None``: read
            from the target's tensors with :func:`group_dependencies` when it has tensors
            (a fresh LoRA target's ``lora_A`` requires ``lora_B``), none for a numel
            table; pass ``{}`` for none)
        source_numel (Mapping[str, int], optional): the source's parameter counts, to
            average block-level APPI into a type-level target group (default: ``None``)
        granularity (str, optional): how to group a target model, ``"type"`` or
            ``"block"`` (default: ``None``, ``"block"`` when a source group name has a
            block suffix)

    Returns:
        Selection: over the target's groups, with the transferred APPI table.

    Raises:
        TypeError, ValueError: as :func:`select_groups`; also a malformed target, or no
            target group with a positive transferred APPI (different group names?).

    Warns:
        EmptySelectionWarning: nothing fits ``budget`` on the target.
    """
    budget = _check_budget(budget)
    method = _check_method(method)
    if isinstance(source_appi, Selection):
        src_appi = dict(source_appi.appi)
        src_numel = dict(source_appi.numel) if source_numel is None else source_numel
    else:
        _check_mapping(source_appi, "appi")
        src_appi = {_check_name(k, "source_appi"): _check_appi(k, a) for k, a in source_appi.items()}
        src_numel = source_numel
    if src_numel is not None:
        src_appi, src_numel = _check_table(src_appi, src_numel)
    numel, groups = _target_table(target, src_appi, granularity)
    appi = _transferred_appi(numel, src_appi, src_numel)
    clean_appi, clean_numel = _check_table(appi, numel)
    if not any(_eligible(a) for a in clean_appi.values()):
        raise ValueError(
            f"no target group has a positive APPI in the source table: target groups "
            f"{list(clean_numel)}, source groups {list(src_appi)}; group both the same way "
            f"(granularity=) or measure more probes on the source"
        )
    if requires is None and groups is not None:
        requires = group_dependencies(groups)
    clean_requires = _check_requires(requires, clean_appi)
    return _select(clean_appi, clean_numel, budget, method, clean_requires, stacklevel=2)


def _saved_module_names(model: nn.Module, selection: Selection, saved: list[str]) -> list[str]:
    """peft ``modules_to_save`` names (dotted paths in the base model) of ``saved`` groups."""
    from torch import nn

    from .grouping import _core_path, _is_modules_to_save_wrapper, base_name, group_parameters

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    granularity = "block" if any(base_name(n) != n for n in selection.numel) else "type"
    groups = group_parameters(model, granularity=granularity, include_frozen=True)
    missing = [g for g in saved if g not in groups]
    if missing:
        raise ValueError(
            f"selected group(s) {missing} are not in this model (it has: "
            f"{', '.join(groups) or 'no groups'}); pass the model the selection was made on "
            f"(or its base model)"
        )
    modules = dict(model.named_modules(remove_duplicate=False))
    core = _core_path(model, modules)
    names = {id(p): n for n, p in model.named_parameters()}
    paths: list[str] = []
    for g in saved:
        for p in groups[g]:
            segments = names[id(p)].split(".")[:-1]
            # A copy inside peft's ModulesToSaveWrapper is saved under the wrapper's name.
            for i, segment in enumerate(segments):
                if segment == "modules_to_save" and _is_modules_to_save_wrapper(modules[".".join(segments[:i])]):
                    segments = segments[:i]
                    break
            if tuple(segments[: len(core)]) == core:
                segments = segments[len(core) :]
            if not segments:
                raise ValueError(
                    f"parameter {names[id(p)]!r} of group {g!r} belongs to the model itself, "
                    f"not to a submodule, so peft's modules_to_save cannot hold it; pass "
                    f"modules_to_save=[...] yourself"
                )
            path = ".".join(segments)
            if path not in paths:
                paths.append(path)
    # A module inside another saved module is saved with it.
    return [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]


# -- models --------------------------------------------------------------------------------------

SelectionLike = Selection | Iterable[str]


def _selection_names(selection: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selected names, candidate names) of a Selection or a plain list of names."""
    if isinstance(selection, Selection):
        return selection.groups, tuple(selection.numel)
    if isinstance(selection, (str, bytes)) or not isinstance(selection, Iterable):
        raise TypeError(
            f"selection must be a Selection or a list of group names, got {type(selection).__name__} {selection!r}"
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
            raise ValueError("pass either granularity= (to group the model) or groups= (your own grouping), not both")
        if not isinstance(groups, Mapping):
            raise TypeError(f"groups must be a mapping group name -> parameters, got {type(groups).__name__}")
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
            f"selected group {g!r} is not in this model (it has: {have}); {_missing_hint(g, base_name(g))}"
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
    tensors = {names[id(p)]: p.detach().to("cpu").contiguous() for params in chosen.values() for p in params}
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
