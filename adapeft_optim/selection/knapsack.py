"""The knapsack with precedence constraints that chooses the groups (paper eq. 11-13).

Group k is an item of weight ``n_k`` (its parameter count) and value ``V_k = APPI_k * n_k``
(its predicted loss reduction); the capacity is ``budget * sum(n_k)``. A group is taken
only together with every group it requires (``requires=``). On a validated table
(:func:`_knapsack`) this module solves it three ways:

- the greedy walk by APPI (:func:`greedy_order`, :func:`_walk`), which skips what does not
  fit (``"greedy"``) or stops there (``"prefix"``, the nested-prefix reading);
- the exact Pareto sets (:func:`_pareto_sets`, Nemhauser-Ullmann over the linked
  components), for ``"exact"`` and the true frontier;
- the smallest weight at which a method selects anything (:func:`_smallest_weight`).

Note [exact arithmetic]: the exact solver and every reported value compare the sums of
``APPI_k * n_k`` exactly (the floats are scaled to integers, see :func:`_knapsack`), so the
answer does not depend on summation order, "equal value" means an exact tie of the given
numbers, and the brute force in the tests (``fractions.Fraction``) must agree with it bit
for bit. Do not replace these sums by float sums.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import NamedTuple

from .validation import _check_table

# The exact solver's Pareto sets hold at most 2**K subsets; this bounds their total size
# over all merge steps. Every table of K <= 20 groups stays under it (at most 2**21 in the
# worst case, equal APPI everywhere); larger tables pass when their frontier is small,
# which is the usual case with measured APPI values.
_MAX_PARETO_WORK = 1 << 22

# Groups linked by requires= are solved together: the exact solver enumerates the closed
# subsets of each linked component (2**size candidates). LoRA dependencies link pairs.
_MAX_COMPONENT = 16


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


# -- the prepared table ---------------------------------------------------------------------------


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


# -- exact: Pareto sets over the linked components -----------------------------------------------


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
        front = _non_dominated(merged)
    return front


def _non_dominated(merged: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The entries of ``merged`` (sorted here) that no lighter or equal entry beats in value."""
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


# -- greedy and prefix: the walk -----------------------------------------------------------------


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


# -- all methods -----------------------------------------------------------------------------------


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
