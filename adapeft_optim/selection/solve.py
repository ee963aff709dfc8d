"""Choosing the groups under a budget: :func:`select_groups` and :func:`pareto_frontier`.

The public entry points of the knapsack (:mod:`.knapsack`): they validate an APPI table,
its parameter counts and dependencies, solve with ``method="greedy"``, ``"prefix"`` or
``"exact"``, and return a :class:`~adapeft_optim.selection.Selection` (with an
:class:`~adapeft_optim.selection.EmptySelectionWarning` when nothing fits) or the frontier
of predicted loss reduction against parameter fraction.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .knapsack import (
    _capacity,
    _eligible,
    _Knapsack,
    _knapsack,
    _mask_names,
    _pareto_sets,
    _smallest_weight,
    _solve,
    _walk,
)
from .notes import EmptySelectionWarning, _empty_note, _nothing_selectable
from .result import Selection
from .validation import _check_budget, _check_method, _check_requires, _check_table

_NO_ACCEPTED_PROBE = "select() needs at least one accepted probe; run more steps or lower r2_min"


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


# Pickles and reprs name the package, as before it was split into modules.
FrontierPoint.__module__ = "adapeft_optim.selection"


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
        return _prefix_frontier(ks)
    return [
        FrontierPoint(w / ks.total, -nv / ks.scale, _mask_names(ks.names, nm)) for w, nv, nm in _pareto_sets(ks, None)
    ]


def _prefix_frontier(ks: _Knapsack) -> list[FrontierPoint]:
    """The nested prefixes of the greedy walk, from the empty set on."""
    points = [FrontierPoint(0.0, 0.0, ())]
    weight = value = 0
    chosen: set[str] = set()
    for item, w, v in _walk(ks, None, stop_at_first=True):
        weight, value = weight + w, value + v
        chosen.update(item)
        groups = tuple(g for g in ks.names if g in chosen)
        points.append(FrontierPoint(weight / ks.total, value / ks.scale, groups))
    return points
