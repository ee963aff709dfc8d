"""Tests for adapeft_optim.selection: knapsack selection, frontiers, Selection, models."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import warnings
from fractions import Fraction

import peft
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import adapeft_optim.selection.knapsack as knapsack_module
from adapeft_optim.grouping import group_parameters
from adapeft_optim.selection import (
    EmptySelectionWarning,
    FrontierPoint,
    Selection,
    apply_selection,
    greedy_order,
    group_dependencies,
    load_selected,
    pareto_frontier,
    save_selected,
    select_groups,
    transfer_selection,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# -- brute-force references (exact rational arithmetic, every subset) ----------------------------

NAMES = ("lora_A", "lora_B", "head", "norm", "bias", "embed", "others", "extra")


def positive(a):
    return a > 0 and math.isfinite(a)


def rank_order(appi, numel):
    """The documented greedy order: APPI descending, then fewer parameters, then name;
    groups never selected for their own sake (APPI not positive and finite) last."""
    return sorted(appi, key=lambda g: (not positive(appi[g]), -appi[g], numel[g], g))


def eligible(appi, numel):
    return [g for g in rank_order(appi, numel) if positive(appi[g])]


def exact_value(appi, numel, subset):
    return sum((Fraction(appi[g]) * numel[g] for g in subset), Fraction(0))


def all_subsets(names):
    for r in range(len(names) + 1):
        yield from itertools.combinations(names, r)


def closure(g, requires):
    seen, todo = {g}, [g]
    while todo:
        for h in requires.get(todo.pop(), ()):
            if h not in seen:
                seen.add(h)
                todo.append(h)
    return seen


def is_closed(subset, requires):
    return all(h in subset for g in subset for h in requires.get(g, ()))


def candidate_sets(appi, requires):
    """Every subset of finite-APPI groups that holds all its groups require."""
    finite = [g for g in appi if math.isfinite(appi[g])]
    return [set(s) for s in all_subsets(finite) if is_closed(set(s), requires)]


def canonical(subsets, order):
    """Among exact ties, the subset holding the earliest groups in greedy order."""
    return min(subsets, key=lambda s: sorted(order.index(g) for g in s))


def weight(numel, subset):
    return sum(numel[g] for g in subset)


def reference_exact(appi, numel, budget, requires=None):
    requires = requires or {}
    total = sum(numel.values())
    order = rank_order(appi, numel)
    feasible = [s for s in candidate_sets(appi, requires) if weight(numel, s) / total <= budget]
    best = max(exact_value(appi, numel, s) for s in feasible)
    ties = [s for s in feasible if exact_value(appi, numel, s) == best]
    fewest = min(weight(numel, s) for s in ties)
    chosen = canonical([s for s in ties if weight(numel, s) == fewest], order)
    return tuple(sorted(chosen, key=order.index))


def reference_walk(appi, numel, budget, requires=None, stop=False):
    """The greedy walk as documented: by APPI, each group with what it requires as one
    item if it fits (and predicts a loss reduction); skip (or stop) otherwise."""
    requires = requires or {}
    total = sum(numel.values())
    order = rank_order(appi, numel)
    taken = set()
    for g in eligible(appi, numel):
        needed = closure(g, requires)
        if g in taken or not all(math.isfinite(appi[h]) for h in needed):
            continue
        item = needed - taken
        if exact_value(appi, numel, item) <= 0:
            continue
        if weight(numel, taken | item) / total > budget:
            if stop:
                break
            continue
        taken |= item
    return tuple(sorted(taken, key=order.index))


def reference_frontier(appi, numel, requires=None):
    requires = requires or {}
    total = sum(numel.values())
    order = rank_order(appi, numel)
    scored = [(weight(numel, s), exact_value(appi, numel, s), s) for s in candidate_sets(appi, requires)]
    front = [
        (w, v, s) for w, v, s in scored if not any(w2 <= w and v2 >= v and (w2 < w or v2 > v) for w2, v2, _ in scored)
    ]
    points = {}
    for w, v, s in front:
        points.setdefault((w, v), []).append(s)
    return [
        FrontierPoint(w / total, float(v), tuple(sorted(canonical(ss, order), key=order.index)))
        for (w, v), ss in sorted(points.items())
    ]


# -- strategies ----------------------------------------------------------------------------------

# Simple values repeat often, so exact ties (equal APPI, equal counts, equal sums) occur.
appi_values = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 1e3]),
    st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False),
)
numel_values = st.one_of(st.sampled_from([1, 2, 3, 4, 10, 1000]), st.integers(1, 10**6))


@st.composite
def tables(draw, min_groups=1, max_groups=8):
    k = draw(st.integers(min_groups, max_groups))
    names = draw(st.permutations(NAMES))[:k]
    return {g: draw(appi_values) for g in names}, {g: draw(numel_values) for g in names}


@st.composite
def budgets(draw, numel):
    total = sum(numel.values())
    # Budgets exactly at a subset's fraction probe the boundary of the capacity test.
    subset = draw(st.lists(st.sampled_from(list(numel)), unique=True))
    return draw(
        st.one_of(
            st.floats(0.0, 1.0),
            st.just(sum(numel[g] for g in subset) / total),
            st.sampled_from([0.0, 1.0]),
        )
    )


@st.composite
def tables_and_budgets(draw):
    appi, numel = draw(tables())
    return appi, numel, draw(budgets(numel))


@st.composite
def requirements(draw, names):
    """Random dependencies between the groups, chains and cycles included."""
    requires = {}
    for g in names:
        needed = draw(st.lists(st.sampled_from(list(names)), max_size=2, unique=True))
        if needed:
            requires[g] = tuple(needed)
    return requires


# Negative and infinite APPI appear only through dependencies' edge cases.
signed_appi = st.one_of(appi_values, st.sampled_from([-1.0, -0.5, math.inf]))


@st.composite
def dependent_cases(draw):
    k = draw(st.integers(1, 7))
    names = draw(st.permutations(NAMES))[:k]
    appi = {g: draw(signed_appi) for g in names}
    numel = {g: draw(numel_values) for g in names}
    return appi, numel, draw(budgets(numel)), draw(requirements(names))


def has_positive(appi):
    return any(positive(a) for a in appi.values())


def selectable_exact(appi, numel, requires):
    return any(exact_value(appi, numel, s) > 0 for s in candidate_sets(appi, requires))


def selectable_walk(appi, numel, requires):
    return bool(reference_walk(appi, numel, 1.0, requires))


def select_quietly(*args, **kwargs):
    """select_groups, asserting the warning exactly when the selection is empty."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sel = select_groups(*args, **kwargs)
    empty = [w for w in caught if issubclass(w.category, EmptySelectionWarning)]
    assert len(empty) == (not sel.groups), [str(w.message) for w in caught]
    return sel


# -- selection properties ------------------------------------------------------------------------


@settings(deadline=None)
@given(tables_and_budgets())
def test_greedy_walk_skips_what_does_not_fit(case):
    appi, numel, budget = case
    if not has_positive(appi):
        with pytest.raises(ValueError, match="all APPI values are zero"):
            select_groups(appi, numel, budget)
        return
    sel = select_quietly(appi, numel, budget)
    assert sel.groups == reference_walk(appi, numel, budget)
    assert sel.fraction <= budget
    assert sel.method == "greedy" and sel.budget == budget
    # Nothing left out would still fit.
    total = sum(numel.values())
    for g in eligible(appi, numel):
        assert g in sel.groups or (sel.num_selected + numel[g]) / total > budget


@settings(deadline=None)
@given(tables_and_budgets())
def test_prefix_is_largest_fitting_prefix(case):
    appi, numel, budget = case
    if not has_positive(appi):
        with pytest.raises(ValueError, match="all APPI values are zero"):
            select_groups(appi, numel, budget, method="prefix")
        return
    total = sum(numel.values())
    names = eligible(appi, numel)
    fitting = [k for k in range(len(names) + 1) if weight(numel, names[:k]) / total <= budget]
    sel = select_quietly(appi, numel, budget, method="prefix")
    assert sel.groups == tuple(names[: max(fitting)])
    assert sel.method == "prefix"
    greedy = select_quietly(appi, numel, budget)
    assert set(sel.groups) <= set(greedy.groups)


@settings(deadline=None)
@given(tables_and_budgets())
def test_exact_matches_brute_force_and_beats_greedy(case):
    appi, numel, budget = case
    if not has_positive(appi):
        with pytest.raises(ValueError, match="all APPI values are zero"):
            select_groups(appi, numel, budget, method="exact")
        return
    exact = select_quietly(appi, numel, budget, method="exact")
    greedy = select_quietly(appi, numel, budget, method="greedy")
    assert exact.groups == reference_exact(appi, numel, budget)
    assert exact_value(appi, numel, exact.groups) >= exact_value(appi, numel, greedy.groups)
    assert exact.fraction <= budget
    assert exact.value == float(exact_value(appi, numel, exact.groups))


@settings(deadline=None, max_examples=200)
@given(dependent_cases(), st.sampled_from(["greedy", "prefix", "exact"]))
def test_dependencies_match_brute_force(case, method):
    appi, numel, budget, requires = case
    if not has_positive(appi):
        with pytest.raises(ValueError, match="all APPI values are zero"):
            select_groups(appi, numel, budget, method, requires=requires)
        return
    can = selectable_exact(appi, numel, requires) if method == "exact" else selectable_walk(appi, numel, requires)
    if not can:
        with pytest.raises(ValueError, match="no group can be selected at any budget"):
            select_groups(appi, numel, budget, method, requires=requires)
        return
    sel = select_quietly(appi, numel, budget, method, requires=requires)
    if method == "exact":
        assert sel.groups == reference_exact(appi, numel, budget, requires)
        walk = reference_walk(appi, numel, budget, requires)
        assert exact_value(appi, numel, sel.groups) >= exact_value(appi, numel, walk)
    else:
        assert sel.groups == reference_walk(appi, numel, budget, requires, stop=method == "prefix")
    assert is_closed(set(sel.groups), requires)
    assert sel.fraction <= budget
    assert sel.requires == {g: tuple(h for h in r if h != g) for g, r in requires.items() if any(h != g for h in r)}


@settings(deadline=None, max_examples=200)
@given(dependent_cases())
def test_frontiers_with_dependencies(case):
    appi, numel, _, requires = case
    exact = pareto_frontier(appi, numel, "exact", requires=requires)
    assert exact == reference_frontier(appi, numel, requires)
    greedy = pareto_frontier(appi, numel, requires=requires)
    assert pareto_frontier(appi, numel, "prefix", requires=requires) == greedy
    assert greedy[0] == FrontierPoint(0.0, 0.0, ())
    for points, method in ((exact, "exact"), (greedy, "greedy"), (greedy, "prefix")):
        for point in points[1:]:
            assert is_closed(set(point.groups), requires)
            sel = select_groups(appi, numel, point.fraction, method, requires=requires)
            assert sel.groups == point.groups
    # Greedy points are nested and grow in both size and (exact) value.
    for a, b in zip(greedy, greedy[1:]):
        assert set(a.groups) < set(b.groups) and a.fraction < b.fraction
        assert exact_value(appi, numel, a.groups) < exact_value(appi, numel, b.groups)


@settings(deadline=None, max_examples=200)
@given(dependent_cases(), st.sampled_from(["greedy", "prefix", "exact"]))
def test_empty_selection_warns_with_the_smallest_budget(case, method):
    appi, numel, budget, requires = case
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sel = select_groups(appi, numel, budget, method, requires=requires)
    except ValueError:
        return  # nothing measured or nothing selectable: covered above
    if sel.groups:
        assert not any(issubclass(w.category, EmptySelectionWarning) for w in caught)
        return
    (warning,) = [w for w in caught if issubclass(w.category, EmptySelectionWarning)]
    message = str(warning.message)
    assert message in sel.notes
    found = re.search(r"smallest budget that selects something is (\S+) \((\S+): ", message)
    smallest, groups = float(found[1]), tuple(found[2].split("+"))
    # The named budget selects the named groups, and no smaller budget selects anything.
    assert select_quietly(appi, numel, smallest, method, requires=requires).groups == groups
    below = math.nextafter(smallest, 0.0)
    assert select_quietly(appi, numel, below, method, requires=requires).groups == ()


@settings(deadline=None)
@given(tables())
def test_exact_frontier_matches_brute_force(table):
    appi, numel = table
    frontier = pareto_frontier(appi, numel, method="exact")
    assert frontier == reference_frontier(appi, numel)
    # Each point is what select_groups answers at exactly its budget.
    for point in frontier[1:]:
        assert select_groups(appi, numel, point.fraction, method="exact").groups == point.groups


@settings(deadline=None)
@given(tables())
def test_greedy_frontier_is_nested_prefixes(table):
    appi, numel = table
    total = sum(numel.values())
    frontier = pareto_frontier(appi, numel)
    names = eligible(appi, numel)
    assert frontier[0] == FrontierPoint(0.0, 0.0, ())
    assert [p.groups for p in frontier] == [tuple(names[:k]) for k in range(len(names) + 1)]
    for point in frontier:
        assert point.fraction == sum(numel[g] for g in point.groups) / total
        assert point.value == float(exact_value(appi, numel, point.groups))
    fractions = [p.fraction for p in frontier]
    values = [p.value for p in frontier]
    assert fractions == sorted(set(fractions))
    assert values == sorted(values)
    for point in frontier[1:]:
        assert select_groups(appi, numel, point.fraction).groups == point.groups
        assert select_groups(appi, numel, point.fraction, "prefix").groups == point.groups


@settings(deadline=None)
@given(tables())
def test_greedy_order_sorts_by_appi_then_size_then_name(table):
    appi, numel = table
    assert greedy_order(appi, numel) == rank_order(appi, numel)


def test_greedy_is_suboptimal_on_classic_counterexample():
    # x has the best value per parameter but blocks y + z, worth more together.
    appi = {"x": 1.2, "y": 1.0, "z": 1.0}
    numel = {"x": 6, "y": 5, "z": 5}
    greedy = select_groups(appi, numel, 10 / 16)
    exact = select_groups(appi, numel, 10 / 16, method="exact")
    assert greedy.groups == ("x",) and greedy.value == pytest.approx(7.2)
    assert exact.groups == ("y", "z") and exact.value == 10.0
    assert [p.groups for p in pareto_frontier(appi, numel, method="exact")] == [
        (),
        ("y",),
        ("x",),
        ("y", "z"),
        ("x", "y"),
        ("x", "y", "z"),
    ]


def test_greedy_skips_a_group_that_does_not_fit_and_goes_on():
    # Issue 11 (b): the best group is too large for 10%; norm + bias fit. The paper's
    # nested-prefix reading stops at once, with a warning naming the budget it needs.
    appi = {"embed": 3.0, "norm": 1.0, "bias": 0.5}
    numel = {"embed": 90, "norm": 4, "bias": 6}
    assert select_groups(appi, numel, 0.1).groups == ("norm", "bias")
    with pytest.warns(
        EmptySelectionWarning,
        match=r"no group fits budget=0\.1 \(method='prefix'\), so the selection is empty; the "
        r"smallest budget that selects something is 0\.9 \(embed: 90 of 100 parameters\)",
    ):
        assert select_groups(appi, numel, 0.1, "prefix").groups == ()
    with pytest.warns(EmptySelectionWarning, match=r"is 0\.04 \(norm: 4 of 100 parameters\)"):
        assert select_groups(appi, numel, 0.03).groups == ()


def test_lora_a_is_selected_only_with_its_zero_partner():
    # Issue 11 (a): lora_A ranks first, but with lora_B at zero it cannot learn alone.
    model = gpt2()
    groups = group_parameters(model)
    numel = {g: sum(p.numel() for p in ps) for g, ps in groups.items()}
    requires = group_dependencies(groups)
    assert requires == {"lora_A": ("lora_B",)}
    appi = {"lora_A": 5.0, "lora_B": 1.0}
    only_a = numel["lora_A"] / sum(numel.values())
    assert select_groups(appi, numel, only_a).groups == ("lora_A",)  # without requires
    total = sum(numel.values())
    assert numel["lora_A"] < numel["lora_B"]  # GPT-2's c_attn: 64 in, 192 out
    # lora_B alone is the lightest useful set; the walk in APPI order meets A + B first.
    smallest = {"greedy": "lora_B", "exact": "lora_B", "prefix": "lora_A+lora_B"}
    for method in ("greedy", "prefix", "exact"):
        fits = smallest[method]
        budget = sum(numel[g] for g in fits.split("+")) / total
        with pytest.warns(EmptySelectionWarning, match=rf"is {budget!r} \({re.escape(fits)}: "):
            sel = select_groups(appi, numel, only_a, method, requires=requires)
        assert sel.groups == ()
        sel = select_groups(appi, numel, 1.0, method, requires=requires)
        assert sel.groups == ("lora_A", "lora_B") and sel.requires == requires
        assert "'lora_A' is selected together with ['lora_B']" in " ".join(sel.notes)


def test_a_required_group_of_negative_value_counts():
    appi = {"a": 2.0, "b": -1.0, "c": 0.5}
    numel = {"a": 1, "b": 1, "c": 1}
    requires = {"a": ["b"]}
    # {a, b} is worth 1.0, more than c; all three are worth 1.5.
    assert select_groups(appi, numel, 2 / 3, requires=requires).groups == ("a", "b")
    assert select_groups(appi, numel, 2 / 3, "exact", requires=requires).groups == ("a", "b")
    assert select_groups(appi, numel, 1.0, requires=requires).groups == ("a", "c", "b")
    # Dragging along a group of larger negative value is never worth it.
    appi["b"] = -3.0
    for method in ("greedy", "exact"):
        assert select_groups(appi, numel, 1.0, method, requires=requires).groups == ("c",)
    with pytest.raises(ValueError, match=r"no group can be selected at any budget"):
        select_groups({"a": 2.0, "b": math.inf}, {"a": 1, "b": 1}, 1.0, requires=requires)


def test_exact_prefers_fewer_parameters_among_equal_values():
    # Eq. (4): {small} and {large} both predict 4.0; only one fits; the refined answer is
    # the smaller one, whatever the order of the table.
    numel = {"large": 8, "small": 4, "filler": 88}
    appi = {"large": 0.5, "small": 1.0, "filler": 0.0}
    sel = select_groups(appi, numel, 0.08, method="exact")
    assert sel.groups == ("small",) and sel.num_selected == 4 and sel.value == 4.0
    assert select_groups(dict(reversed(appi.items())), numel, 0.08, "exact").groups == ("small",)


def test_ties_break_by_size_then_name():
    appi = {"b": 1.0, "a": 1.0, "c": 1.0, "d": 2.0}
    numel = {"b": 5, "a": 5, "c": 3, "d": 10}
    assert greedy_order(appi, numel) == ["d", "c", "a", "b"]


def test_budget_boundaries():
    appi = {"a": 3.0, "b": 2.0, "c": 1.0, "zero": 0.0}
    numel = {"a": 1, "b": 2, "c": 3, "zero": 4}
    with pytest.warns(EmptySelectionWarning, match=r"smallest budget .* is 0\.1 \(a: 1 of 10"):
        assert select_groups(appi, numel, 0.0).groups == ()
    assert select_groups(appi, numel, 0.3).groups == ("a", "b")  # exactly 3 / 10
    assert select_groups(appi, numel, 0.29999).groups == ("a",)
    assert select_groups(appi, numel, 0.29999, "prefix").groups == ("a",)
    # The zero-APPI group stays out even when everything fits.
    assert select_groups(appi, numel, 1.0).groups == ("a", "b", "c")
    assert select_groups(appi, numel, 1.0, method="exact").groups == ("a", "b", "c")


def test_non_positive_and_infinite_appi_are_never_selected():
    appi = {"pos": 1.0, "neg": -5.0, "inf": math.inf, "ninf": -math.inf, "zero": 0.0}
    numel = dict.fromkeys(appi, 1)
    for method in ("greedy", "prefix", "exact"):
        assert select_groups(appi, numel, 1.0, method=method).groups == ("pos",)
    # Unselectable groups go last, still by APPI descending.
    assert greedy_order(appi, numel) == ["pos", "inf", "zero", "neg", "ninf"]
    assert [p.groups for p in pareto_frontier(appi, numel, "exact")] == [(), ("pos",)]


def test_frontier_of_table_without_positive_appi_is_empty_set():
    appi, numel = {"a": 0.0, "b": 0.0}, {"a": 1, "b": 2}
    for method in ("greedy", "prefix", "exact"):
        assert pareto_frontier(appi, numel, method) == [FrontierPoint(0.0, 0.0, ())]
    assert greedy_order(appi, numel) == ["a", "b"]


def test_unprobed_groups_are_flagged():
    appi = {"norm": 2.0, "lora_A": 0.0, "head": 0.0, "bias": -1.0}
    numel = {"norm": 10, "lora_A": 20, "head": 30, "bias": 40}
    sel = select_groups(appi, numel, 1.0)
    assert sel.unprobed == ("lora_A", "head")
    assert "unprobed=['lora_A', 'head']" in repr(sel)
    assert sel.notes[0] == (
        "APPI 0 (no accepted probe) for ['lora_A', 'head']: never selected for their own "
        "sake; run more steps (or lower r2_min) to measure them"
    )
    with pytest.warns(EmptySelectionWarning, match=r"not considered: \['lora_A', 'head'\]"):
        select_groups(appi, numel, 0.05)


def test_exact_with_many_groups_is_optimal_among_neighbours():
    # 40 groups: beyond exhaustive enumeration. The optimum can only beat greedy, stays in
    # budget, and the frontier's point at the budget is the selection.
    gen = torch.Generator().manual_seed(0)
    appi = {f"g{i}": float(torch.rand((), generator=gen)) for i in range(40)}
    numel = {f"g{i}": int(torch.randint(1, 10**9, (), generator=gen)) for i in range(40)}
    exact = select_groups(appi, numel, 0.3, method="exact")
    greedy = select_groups(appi, numel, 0.3)
    assert exact.fraction <= 0.3
    assert exact_value(appi, numel, exact.groups) >= exact_value(appi, numel, greedy.groups)
    frontier = pareto_frontier(appi, numel, "exact")
    at_budget = [p for p in frontier if p.fraction <= 0.3][-1]
    assert at_budget.groups == exact.groups
    # Dropping any group of the optimum, a fitting unused group must not be worth more.
    unused = [g for g in appi if g not in exact.groups]
    for g in exact.groups:
        rest = [h for h in exact.groups if h != g]
        room = 0.3 * sum(numel.values()) - sum(numel[h] for h in rest)
        for h in unused:
            if numel[h] <= room:
                swapped = exact_value(appi, numel, rest + [h])
                assert swapped <= exact_value(appi, numel, exact.groups)


def test_exact_at_block_granularity_with_lora_pairs():
    # 12 blocks x (lora_A@i requires lora_B@i): 24 linked groups in 12 pairs, checked
    # against the closed form: per block, the best of {}, {B}, {A, B} by value.
    appi, numel, requires = {}, {}, {}
    for i in range(12):
        appi[f"lora_A@{i}"], appi[f"lora_B@{i}"] = float(i + 1), 0.5
        numel[f"lora_A@{i}"], numel[f"lora_B@{i}"] = 10, 10
        requires[f"lora_A@{i}"] = (f"lora_B@{i}",)
    sel = select_groups(appi, numel, 1.0, "exact", requires=requires)
    assert set(sel.groups) == set(numel)
    # Room for 3 pairs: the three most valuable blocks, A and B together.
    sel = select_groups(appi, numel, 60 / 240, "exact", requires=requires)
    assert set(sel.groups) == {f"lora_{f}@{i}" for f in "AB" for i in (9, 10, 11)}
    greedy = select_groups(appi, numel, 60 / 240, requires=requires)
    assert greedy.groups == sel.groups


# -- input errors --------------------------------------------------------------------------------

APPI = {"a": 1.0, "b": 2.0}
NUMEL = {"a": 10, "b": 20}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(budget=1.5), ValueError, r"Invalid budget: 1\.5; .*\[0, 1\]"),
        (dict(budget=-0.1), ValueError, r"Invalid budget: -0\.1"),
        (dict(budget=math.nan), ValueError, r"Invalid budget: nan"),
        (dict(budget="0.1"), TypeError, r"budget must be a number in \[0, 1\].*str '0\.1'"),
        (dict(budget=None), TypeError, r"budget must be a number.*NoneType"),
        (dict(method="dp"), ValueError, r"Unknown method 'dp'; use one of 'greedy', 'prefix', 'exact'"),
        (dict(requires="b"), TypeError, r"requires must be a mapping group name -> names"),
        (
            dict(requires={"a": "b"}),
            TypeError,
            r"requires\['a'\] must be a sequence of group names, got str 'b'; write \('b',\) "
            r"for one group",
        ),
        (
            dict(requires={"a": ["zz"]}),
            ValueError,
            r"requires names group\(s\) \['zz'\] that are not candidate groups \['a', 'b'\]",
        ),
        (dict(requires={"a": [1]}), TypeError, r"group names in requires must be str"),
        (
            dict(appi={"a": 1.0}),
            ValueError,
            r"appi and numel must have the same group names; only in appi: \[\], "
            r"only in numel: \['b'\]",
        ),
        (dict(numel={"a": 10, "b": 0}), ValueError, r"numel of group 'b' must be a positive parameter count, got 0"),
        (dict(numel={"a": 10, "b": -3}), ValueError, r"numel of group 'b' .* got -3"),
        (dict(numel={"a": 10, "b": 2.5}), TypeError, r"numel of group 'b' must be an int"),
        (dict(appi={"a": 1.0, "b": math.nan}), ValueError, r"APPI of group 'b' is NaN"),
        (dict(appi={"a": 1.0, "b": "x"}), TypeError, r"APPI of group 'b' must be a real number"),
        (dict(appi={}, numel={}), ValueError, r"appi is empty"),
        (
            dict(appi={"a": 0.0, "b": 0.0}),
            ValueError,
            r"all APPI values are zero .*select\(\) needs at least one accepted probe; run more "
            r"steps or lower r2_min",
        ),
        (dict(appi=[1.0, 2.0]), TypeError, r"appi must be a mapping group name -> number"),
    ],
)
def test_select_groups_errors(kwargs, error, match):
    args = dict(appi=APPI, numel=NUMEL, budget=0.5, method="greedy")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        select_groups(**args)


def test_pareto_frontier_and_greedy_order_validate():
    with pytest.raises(ValueError, match=r"Unknown method 'knapsack'"):
        pareto_frontier(APPI, NUMEL, method="knapsack")
    with pytest.raises(ValueError, match=r"APPI of group 'a' is NaN"):
        pareto_frontier({"a": math.nan, "b": 1.0}, NUMEL)
    with pytest.raises(ValueError, match=r"numel of group 'a' must be a positive"):
        greedy_order(APPI, {"a": 0, "b": 1})


def test_exact_frontier_explosion_suggests_greedy(monkeypatch):
    # Equal APPI and power-of-two sizes make every one of the 2**12 subsets Pareto-optimal.
    monkeypatch.setattr(knapsack_module, "_MAX_PARETO_WORK", 2**12)
    appi = {f"g{i}": 1.0 for i in range(12)}
    numel = {f"g{i}": 2**i for i in range(12)}
    with pytest.raises(ValueError, match=r"over 12 groups has too many Pareto-optimal subsets.*method='greedy'"):
        pareto_frontier(appi, numel, method="exact")
    with pytest.raises(ValueError, match=r"too many Pareto-optimal subsets"):
        select_groups(appi, numel, 1.0, method="exact")
    monkeypatch.setattr(knapsack_module, "_MAX_PARETO_WORK", 2**14)
    frontier = pareto_frontier(appi, numel, method="exact")
    assert [round(p.fraction * 4095) for p in frontier] == list(range(4096))


# -- Selection -----------------------------------------------------------------------------------


def make_selection():
    appi = {"head": 0.1 + 0.2, "norm": 1 / 3, "bias": 0.0, "others": 1e-300}
    numel = {"head": 1_000, "norm": 482, "bias": 9_000, "others": 109_974}
    return select_groups(appi, numel, 0.02)


def test_selection_fields_and_properties():
    sel = make_selection()
    assert sel.groups == ("norm", "head")
    assert sel.total_numel == 120_456 and sel.num_selected == 1_482
    assert sel.fraction == 1_482 / 120_456
    assert sel.value == float(Fraction(1 / 3) * 482 + Fraction(0.1 + 0.2) * 1_000)
    assert sel.method == "greedy" and sel.budget == 0.02


def test_selection_repr():
    assert repr(make_selection()) == (
        "Selection(groups=['norm', 'head'], 1,482 params = 1.23% of 120,456, "
        "method='greedy', budget=0.02, unprobed=['bias'])"
    )


@settings(deadline=None)
@given(dependent_cases(), st.sampled_from(["greedy", "prefix", "exact"]))
def test_selection_json_round_trip(case, method):
    appi, numel, budget, requires = case
    if not has_positive(appi):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptySelectionWarning)
            sel = select_groups(appi, numel, budget, method=method, requires=requires)
    except ValueError:
        return  # nothing selectable at any budget
    sel = sel.with_lora({"target_modules": ["q", "v"], "r": 8, "lora_alpha": 16.0})
    back = Selection.from_json(sel.to_json())
    assert back == sel
    assert all(back.appi[g].hex() == sel.appi[g].hex() for g in appi)
    assert list(back.numel) == list(sel.numel) and back.groups == sel.groups
    assert back.requires == sel.requires and back.lora == sel.lora


def test_selection_json_without_requires_and_lora_reads_as_none():
    # A file written before dependencies and LoRA settings were recorded.
    old = {k: v for k, v in json.loads(make_selection().to_json()).items() if k not in ("requires", "lora")}
    back = Selection.from_json(json.dumps(old))
    assert back == make_selection() and back.requires == {} and back.lora is None


def test_selection_checks_its_dependencies():
    numel = {"lora_A": 4, "lora_B": 12, "norm": 4}
    requires = {"lora_A": ["lora_B"]}
    with pytest.raises(
        ValueError,
        match=r"selected group 'lora_A' cannot learn without \['lora_B'\] \(requires\), which "
        r"are not selected; select them too or leave 'lora_A' out",
    ):
        Selection.from_groups(["lora_A", "norm"], numel, requires=requires)
    sel = Selection.from_groups(["lora_B", "lora_A"], numel, requires=requires)
    assert sel.requires == {"lora_A": ("lora_B",)} and sel.method == "manual"
    assert sel.notes == (
        "APPI 0 (no accepted probe) for ['lora_A', 'lora_B', 'norm']: never selected for "
        "their own sake; run more steps (or lower r2_min) to measure them",
        "'lora_A' is selected together with ['lora_B']: it cannot learn without them",
    )


def test_selection_save_and_load(tmp_path):
    sel = make_selection()
    sel.save(tmp_path / "sel.json")
    assert Selection.load(tmp_path / "sel.json") == sel
    assert json.loads((tmp_path / "sel.json").read_text())["groups"] == ["norm", "head"]


def test_selection_snapshots_its_tables():
    appi, numel = {"a": 2.0, "b": 1.0}, {"a": 1, "b": 1}
    sel = select_groups(appi, numel, 0.5)
    appi["a"] = 0.0
    numel["c"] = 5
    assert sel.appi == {"a": 2.0, "b": 1.0} and sel.numel == {"a": 1, "b": 1}


def test_selection_from_groups():
    sel = Selection.from_groups(["bias"], {"bias": 10, "others": 90})
    assert sel.method == "manual" and sel.budget == 0.1 and sel.fraction == 0.1
    assert sel.appi == {"bias": 0.0, "others": 0.0}
    assert Selection.from_json(sel.to_json()) == sel


GOOD = json.loads(make_selection().to_json())


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", r"not valid JSON"),
        (
            "[1, 2]",
            r"expected a JSON object with keys \['groups', 'numel', 'appi', 'method', "
            r"'budget'\]",
        ),
        (json.dumps({k: v for k, v in GOOD.items() if k != "budget"}), r"missing key\(s\) \['budget'\]"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k not in ("appi", "groups")}),
            r"missing key\(s\) \['groups', 'appi'\]",
        ),
        (json.dumps({**GOOD, "format": "other"}), r"format is 'other'"),
        (json.dumps({**GOOD, "version": 7}), r"version 7 is not supported"),
        (json.dumps({**GOOD, "groups": "norm"}), r"'groups' must be a list of names"),
        (json.dumps({**GOOD, "groups": ["nope"]}), r"selected group\(s\) \['nope'\] are not among"),
        (json.dumps({**GOOD, "groups": ["norm", "norm"]}), r"more than once"),
        (json.dumps({**GOOD, "numel": {**GOOD["numel"], "head": "1000"}}), r"numel of group 'head' must be an int"),
        (json.dumps({**GOOD, "appi": {"head": 1.0}}), r"same group names"),
        (json.dumps({**GOOD, "method": "random"}), r"Unknown method 'random'"),
        (json.dumps({**GOOD, "budget": 2}), r"Invalid budget: 2"),
        (json.dumps({**GOOD, "budget": 0.001}), r"more than the budget 0\.001"),
        (json.dumps({**GOOD, "requires": {"head": "bias"}}), r"'requires' must map group names to lists of names"),
        (
            json.dumps({**GOOD, "requires": {"head": ["bias"]}}),
            r"selected group 'head' cannot learn without \['bias'\]",
        ),
        (
            json.dumps({**GOOD, "requires": {"head": ["lora_B"]}}),
            r"requires names group\(s\) \['lora_B'\] that are not candidate groups",
        ),
        (json.dumps({**GOOD, "lora": ["q"]}), r"lora must be a dict of LoraConfig settings"),
        (
            json.dumps({**GOOD, "lora": {"bias": "all"}}),
            r"lora settings must not hold \['bias'\]: to_peft_config derives them",
        ),
    ],
)
def test_selection_from_json_errors(text, match):
    with pytest.raises(ValueError, match=match):
        Selection.from_json(text)


def test_selection_from_json_needs_text():
    with pytest.raises(TypeError, match=r"expects the JSON text.*Selection\.load\(path\)"):
        Selection.from_json({"groups": []})


def test_selection_is_frozen():
    sel = make_selection()
    with pytest.raises(AttributeError):
        sel.budget = 0.5


# -- models --------------------------------------------------------------------------------------

SEGMENTS = {  # independent expectations for GPT-2 + LoRA on c_attn, by dotted name segment
    "lora_A": {"lora_A"},
    "lora_B": {"lora_B"},
    "norm": {"ln_1", "ln_2", "ln_f"},
}


def gpt2(n_layer=2, n_embd=64, *, lora=True, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=2,
        vocab_size=128,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    if lora:
        config = peft.LoraConfig(target_modules=["c_attn"], r=4, fan_in_fan_out=True)
        model = peft.get_peft_model(model, config)
    return model.eval()


def numel_table(model, granularity="type"):
    groups = group_parameters(model, include_frozen=True, granularity=granularity)
    return {g: sum(p.numel() for p in ps) for g, ps in groups.items()}


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names_with_segments(model, segments):
    return {n for n, _ in model.named_parameters() if segments & set(n.split("."))}


def batch():
    return torch.arange(24).reshape(2, 12) % 128


@pytest.fixture(scope="module")
def small_selection():
    # APPI ranks norm > lora_B > the rest; the budget fits norm and lora_B only.
    model = gpt2()
    numel = numel_table(model)
    appi = {g: 0.0 for g in numel} | {"norm": 5.0, "lora_B": 2.0, "lora_A": 1.0, "embed": 0.5}
    budget = (numel["norm"] + numel["lora_B"]) / sum(numel.values())
    return select_groups(appi, numel, budget)


def test_apply_selection_trains_exactly_the_selected_groups(small_selection):
    assert small_selection.groups == ("norm", "lora_B")
    model = gpt2()
    returned = apply_selection(model, small_selection)
    groups = group_parameters(model, include_frozen=True)
    for name, params in groups.items():
        assert all(p.requires_grad == (name in small_selection.groups) for p in params), name
    expected = names_with_segments(model, SEGMENTS["norm"] | SEGMENTS["lora_B"])
    assert trainable_names(model) == expected and len(expected) == 2 * 4 + 2 + 2
    assert list(returned) == ["norm", "lora_B"]
    assert all(any(p is q for q in groups[g]) for g, ps in returned.items() for p in ps)


def test_apply_selection_transfers_to_a_larger_model_through_json(small_selection):
    selection = Selection.from_json(small_selection.to_json())
    large = gpt2(n_layer=4, n_embd=128)
    apply_selection(large, selection)
    for name, params in group_parameters(large, include_frozen=True).items():
        assert all(p.requires_grad == (name in selection.groups) for p in params), name
    expected = names_with_segments(large, SEGMENTS["norm"] | SEGMENTS["lora_B"])
    assert trainable_names(large) == expected and len(expected) == 4 * 4 + 2 + 4


def test_apply_selection_block_granularity():
    model = gpt2()
    numel = numel_table(model, "block")
    sel = Selection.from_groups(["norm", "lora_A@1"], numel)
    apply_selection(model, sel)
    assert trainable_names(model) == {
        "base_model.model.transformer.ln_f.weight",
        "base_model.model.transformer.ln_f.bias",
        "base_model.model.transformer.h.1.attn.c_attn.lora_A.default.weight",
    }


def test_apply_selection_accepts_names_and_custom_groups():
    model = gpt2()
    apply_selection(model, ["lora_A"])
    assert trainable_names(model) == names_with_segments(model, SEGMENTS["lora_A"])
    wpe = model.base_model.model.transformer.wpe.weight
    returned = apply_selection(model, ["positions"], groups={"positions": [wpe]})
    assert trainable_names(model) == {"base_model.model.transformer.wpe.weight"}
    assert returned["positions"][0] is wpe


def test_apply_selection_missing_group_changes_nothing(small_selection):
    model = gpt2(lora=False)
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 == 0)
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(
        ValueError,
        match=r"selected group 'lora_B' is not in this model \(it has: norm, bias, embed, "
        r"others\); wrap the model with peft LoRA first \(peft\.get_peft_model\) so it has lora_B",
    ):
        apply_selection(model, small_selection)
    assert [p.requires_grad for p in model.parameters()] == before


@pytest.mark.parametrize(
    "selection, kwargs, error, match",
    [
        ("norm", {}, TypeError, r"selection must be a Selection or a list of group names"),
        (["norm"], {"granularity": "layer"}, ValueError, r"Invalid granularity: 'layer'"),
        (["norm"], {"granularity": "type", "groups": {}}, ValueError, r"not both"),
        (
            ["x"],
            {"groups": {"x": [torch.nn.Parameter(torch.zeros(2))]}},
            ValueError,
            r"group 'x' holds a tensor of shape \(2,\) that is not a parameter of this model",
        ),
    ],
)
def test_apply_selection_errors(selection, kwargs, error, match):
    model = gpt2()
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(error, match=match):
        apply_selection(model, selection, **kwargs)
    assert [p.requires_grad for p in model.parameters()] == before


def bert_cls(hidden=32, labels=3, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=labels,
    )
    return transformers.BertForSequenceClassification(config).eval()


def seq_cls_lora(model):
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["query", "value"],
    )
    return peft.get_peft_model(model, config)


def test_apply_selection_never_trains_the_seq_cls_original_head():
    # Issue 11 (c): peft keeps the classifier twice; the frozen original stays frozen even
    # when everything was made trainable before.
    model = seq_cls_lora(bert_cls())
    for p in model.parameters():
        p.requires_grad_(True)
    apply_selection(model, ["lora_A", "lora_B", "head"])
    assert trainable_names(model) == names_with_segments(model, {"lora_A", "lora_B", "modules_to_save"})
    assert not names_with_segments(model, {"original_module"}) & trainable_names(model)


# -- dependencies --------------------------------------------------------------------------------


def group_gradients_are_zero(model, groups):
    """Independent expectation: the groups whose whole gradient is exactly zero."""
    model.zero_grad(set_to_none=True)
    model(input_ids=batch(), labels=batch()).loss.backward()
    return {g for g, ps in groups.items() if all(p.grad is None or not p.grad.any() for p in ps)}


def lora_tensors(model, factor, block=None):
    return [p for n, p in model.named_parameters() if factor in n.split(".") and (block is None or f"h.{block}" in n)]


def fill(tensors, value=None, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=gen) if value is None else torch.full_like(t, value))


@pytest.mark.parametrize(
    "setup, expected_type, expected_block",
    [
        # peft's init: B = 0, so A's gradient is zero.
        ("fresh", {"lora_A": ("lora_B",)}, {"lora_A@0": ("lora_B@0",), "lora_A@1": ("lora_B@1",)}),
        # B of block 1 moved: A@1 learns; at type level lora_B is no longer all zero.
        ("B1 moved", {}, {"lora_A@0": ("lora_B@0",)}),
        # B moved everywhere, A zero: now B needs A.
        ("A zero", {"lora_B": ("lora_A",)}, {"lora_B@0": ("lora_A@0",), "lora_B@1": ("lora_A@1",)}),
        # Both zero: neither learns; they are selected together.
        (
            "both zero",
            {"lora_A": ("lora_B",), "lora_B": ("lora_A",)},
            {f"lora_{x}@{i}": (f"lora_{y}@{i}",) for i in (0, 1) for x, y in ("AB", "BA")},
        ),
    ],
)
def test_group_dependencies_match_zero_gradients(setup, expected_type, expected_block):
    model = gpt2()
    if setup == "B1 moved":
        fill(lora_tensors(model, "lora_B", block=1))
    elif setup == "A zero":
        fill(lora_tensors(model, "lora_B"))
        fill(lora_tensors(model, "lora_A"), 0.0)
    elif setup == "both zero":
        fill(lora_tensors(model, "lora_A"), 0.0)
    for granularity, expected in (("type", expected_type), ("block", expected_block)):
        groups = group_parameters(model, granularity=granularity)
        requires = group_dependencies(groups)
        assert requires == expected
        assert set(requires) == group_gradients_are_zero(model, groups)


def test_group_dependencies_of_embedding_lora():
    # peft initialises lora_embedding_A to zero (and B randomly): the reverse dependency.
    torch.manual_seed(0)
    base = gpt2(lora=False)
    model = peft.get_peft_model(base, peft.LoraConfig(target_modules=["wpe"], r=4))
    groups = group_parameters(model)
    assert group_dependencies(groups) == {"lora_B": ("lora_A",)}
    assert group_gradients_are_zero(model, groups) == {"lora_B"}
    assert group_dependencies(group_parameters(gpt2(lora=False))) == {}


def test_group_dependencies_errors():
    with pytest.raises(TypeError, match=r"expects a mapping group name -> parameters"):
        group_dependencies([torch.zeros(2)])
    with pytest.raises(TypeError, match=r"groups\['a'\] holds a float, not a tensor"):
        group_dependencies({"a": [1.0]})
    with pytest.raises(TypeError, match=r"groups\['a'\] must be a list of tensors"):
        group_dependencies({"a": torch.zeros(2)})


# -- transfer ------------------------------------------------------------------------------------


@settings(deadline=None)
@given(dependent_cases(), st.sampled_from(["greedy", "prefix", "exact"]), st.data())
def test_transfer_with_the_same_names_resolves_with_target_sizes(case, method, data):
    appi, _, budget, requires = case
    target = {g: data.draw(numel_values) for g in appi}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptySelectionWarning)
            expected = select_groups(appi, target, budget, method, requires=requires)
    except ValueError as err:
        match = re.escape(str(err)) if has_positive(appi) else "no target group has a positive"
        with pytest.raises(ValueError, match=match):
            transfer_selection(appi, target, budget, method, requires=requires)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptySelectionWarning)
        assert transfer_selection(appi, target, budget, method, requires=requires) == expected


def test_transfer_respects_the_target_budget_where_name_transfer_does_not():
    source_numel = {"embed": 50, "norm": 10, "others": 940}
    appi = {"embed": 2.0, "norm": 1.0, "others": 0.01}
    source = select_groups(appi, source_numel, 0.06)
    assert source.groups == ("embed", "norm")
    # In the target the embedding is 8% of the model: it no longer fits 6%.
    target = {"embed": 8_000, "norm": 100, "others": 91_900}
    assert Selection.from_groups(source.groups, target).fraction > 0.06
    sel = transfer_selection(source, target, 0.06)
    assert sel.groups == ("norm",) and sel.appi == appi and sel.numel == target
    assert transfer_selection(source, target, 0.06, "exact").groups == ("norm",)


def test_transfer_between_granularities():
    source = {"norm": 4.0, "norm@0": 2.0, "norm@1": 0.0, "norm@2": 1.0, "others": 0.5}
    source_numel = {"norm": 10, "norm@0": 10, "norm@1": 10, "norm@2": 30, "others": 100}
    target = {"norm": 1_000, "others": 9_000}
    # Type-level target: parameter-weighted mean over the measured norm groups (norm@1 is
    # not measured; the source's plain "norm" is the part outside the blocks, like ln_f).
    sel = transfer_selection(source, target, 1.0, source_numel=source_numel)
    assert sel.appi == {"norm": (4 * 10 + 2 * 10 + 1 * 30) / 50, "others": 0.5}
    with_selection = Selection.from_groups([], source_numel, source)
    assert transfer_selection(with_selection, target, 1.0) == sel
    with pytest.raises(
        ValueError,
        match=r"target group 'norm' is split by block in the source"
        r".*pass the source Selection or source_numel=",
    ):
        transfer_selection(source, target, 1.0)
    # Block-level target of a type-level source: every block takes the role's influence;
    # a block the block-level source does not have is unprobed.
    block_target = {"norm@0": 5, "norm@7": 5, "norm": 2, "others": 8}
    sel = transfer_selection({"norm": 3.0, "others": 1.0}, block_target, 1.0)
    assert sel.appi == {"norm@0": 3.0, "norm@7": 3.0, "norm": 3.0, "others": 1.0}
    sel = transfer_selection({"norm@0": 3.0, "norm": 1.0, "others": 1.0}, block_target, 1.0)
    assert sel.appi == {"norm@0": 3.0, "norm@7": 0.0, "norm": 1.0, "others": 1.0}
    assert sel.unprobed == ("norm@7",) and "norm@7" not in sel.groups
    # Type-level source and target: the names match or the group is unmeasured.
    sel = transfer_selection({"norm": 3.0}, {"norm": 5, "bias": 5}, 1.0)
    assert sel.appi == {"norm": 3.0, "bias": 0.0} and sel.unprobed == ("bias",)


def test_transfer_to_a_model_reads_its_sizes_and_dependencies():
    source = {"lora_A": 5.0, "lora_B": 1.0, "norm": 0.5, "bias": 0.0, "embed": 0.1, "others": 0.01}
    large = gpt2(n_layer=4, n_embd=128)
    numel = numel_table(large)
    budget = (numel["lora_A"] + numel["norm"]) / sum(numel.values())
    sel = transfer_selection(source, large, budget)
    assert sel.numel == numel and sel.requires == {"lora_A": ("lora_B",)}
    # lora_A cannot come without the (zero) lora_B, which does not fit next to it.
    assert "lora_A" not in sel.groups
    assert (
        sel.groups
        == select_groups({g: source[g] for g in numel}, numel, budget, requires={"lora_A": ["lora_B"]}).groups
    )
    assert transfer_selection(source, large, budget, requires={}).groups == ("lora_A", "norm")
    groups = group_parameters(large, include_frozen=True)
    assert transfer_selection(source, groups, budget) == sel
    assert sel.unprobed == ("bias",)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (({"a": 1.0}, "model", 0.5), {}, TypeError, r"target must be a model, a mapping"),
        (({"a": 1.0}, {"a": 3, "b": [torch.zeros(2)]}, 0.5), {}, TypeError, r"not a mix"),
        (({"a": 1.0}, {"a": [1.0]}, 0.5), {}, TypeError, r"target\['a'\] holds a float"),
        (({"a": 1.0}, {"a": 3}, 0.5), {"granularity": "block"}, ValueError, r"granularity= groups a model"),
        (
            ({"a": 1.0}, {"b": 3}, 0.5),
            {},
            ValueError,
            r"no target group has a positive APPI in the source table: target groups \['b'\], "
            r"source groups \['a'\]",
        ),
        (({"a": 1.0}, {"a": 3}, 2.0), {}, ValueError, r"Invalid budget: 2\.0"),
        (({"a": 1.0}, {"a": 3}, 0.5), {"method": "best"}, ValueError, r"Unknown method 'best'"),
    ],
)
def test_transfer_selection_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        transfer_selection(*args, **kwargs)


# -- rebuilding a run with peft ------------------------------------------------------------------


def test_to_peft_config_rebuilds_a_seq_cls_run():
    run = seq_cls_lora(bert_cls())
    numel = numel_table(run)
    sel = Selection.from_groups(["lora_A", "lora_B", "norm", "head"], numel).with_lora(run)
    sel = Selection.from_json(sel.to_json())
    assert (sel.lora["r"], sel.lora["lora_alpha"], sel.lora["task_type"]) == (4, 16, "SEQ_CLS")
    assert sel.lora["target_modules"] == ["query", "value"] and sel.lora["lora_dropout"] == 0.05
    base = bert_cls(seed=1)
    layer_norms = {n for n, m in base.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert len(layer_norms) == 5
    for source in (base, run):  # named from the base model or from the run's peft model
        config = sel.to_peft_config(source)
        assert isinstance(config, peft.LoraConfig)
        assert set(config.modules_to_save) == layer_norms | {"classifier"}
        assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 16, 0.05)
        assert set(config.target_modules) == {"query", "value"} and config.bias == "none"
    rebuilt = peft.get_peft_model(base, sel.to_peft_config(base))
    # The same candidate groups with the same sizes, and peft trains exactly the selection.
    assert numel_table(rebuilt) == sel.numel
    expected = names_with_segments(rebuilt, {"lora_A", "lora_B", "modules_to_save"})
    assert trainable_names(rebuilt) == expected
    apply_selection(rebuilt, sel)
    assert trainable_names(rebuilt) == expected


def test_to_peft_config_bias_and_blocks():
    run = gpt2()
    numel = numel_table(run, "block")
    assert [g for g in numel if g.startswith("bias")] == ["bias@0", "bias@1"]
    sel = Selection.from_groups(["lora_A@1", "lora_B@1", "bias@0", "bias@1"], numel)
    sel = sel.with_lora(run.peft_config["default"])
    config = sel.to_peft_config()  # no module names needed
    assert config.bias == "all" and config.layers_to_transform == [1]
    assert config.fan_in_fan_out is True and config.modules_to_save is None
    rebuilt = peft.get_peft_model(gpt2(lora=False, seed=1), config)
    apply_selection(rebuilt, sel)
    assert trainable_names(rebuilt) == {
        n for n in names_with_segments(rebuilt, {"lora_A", "lora_B"}) if ".h.1." in n
    } | {
        n
        for n, _ in rebuilt.named_parameters()
        if n.endswith(".bias") and not {"ln_1", "ln_2", "ln_f"} & set(n.split("."))
    }
    assert sel.to_peft_config(r=16, bias="lora_only").r == 16
    partial = Selection.from_groups(["bias@0"], numel, lora=sel.lora)
    with pytest.raises(
        ValueError,
        match=r"selected bias groups \['bias@0'\] are only part of the "
        r"biases \(\['bias@0', 'bias@1'\]\), and peft's bias= trains all",
    ):
        partial.to_peft_config()
    assert partial.to_peft_config(bias="all").bias == "all"


@pytest.mark.parametrize(
    "groups, lora, kwargs, match",
    [
        (["lora_A", "lora_B"], None, {}, r"this Selection records no LoRA settings"),
        (["norm"], {"r": 4}, {}, r"records no LoRA settings \(target_modules, r, \.\.\.\)"),
        (
            ["norm", "lora_B"],
            {"target_modules": ["c_attn"]},
            {},
            r"selected group\(s\) \['norm'\] are trained in peft through modules_to_save.*pass "
            r"model=",
        ),
        (["others"], {"target_modules": ["c_attn"]}, {}, r"are base weights"),
    ],
)
def test_to_peft_config_errors(groups, lora, kwargs, match):
    sel = Selection.from_groups(groups, numel_table(gpt2()), lora=lora)
    with pytest.raises(ValueError, match=match):
        sel.to_peft_config(**kwargs)


def test_to_peft_config_without_lora_candidates_and_explicit_modules():
    plain = numel_table(gpt2(lora=False))
    sel = Selection.from_groups(["norm"], plain)
    with pytest.raises(
        ValueError,
        match=r"has no LoRA groups \(candidates \['norm', 'bias', "
        r"'embed', 'others'\]\) and a LoraConfig needs adapters",
    ):
        sel.to_peft_config(modules_to_save=["ln_f"])
    config = sel.to_peft_config(modules_to_save=["ln_f"], target_modules=["c_attn"])
    assert config.modules_to_save == ["ln_f"] and config.bias == "none"


def test_with_lora_errors():
    sel = make_selection()
    with pytest.raises(TypeError, match=r"with_lora expects a peft model, a LoraConfig or a dict"):
        sel.with_lora("query")
    with pytest.raises(ValueError, match=r"must not hold \['modules_to_save'\]"):
        sel.with_lora({"modules_to_save": ["classifier"]})
    with pytest.raises(TypeError, match=r"lora setting 'r' must be JSON data"):
        sel.with_lora({"r": object()})
    with pytest.raises(ValueError, match=r"records LoRA settings, got a IA3 config"):
        sel.with_lora(peft.IA3Config(target_modules=["c_attn"], feedforward_modules=[]))
    assert sel.with_lora({"target_modules": {"v", "q"}}).lora == {"target_modules": ["q", "v"]}


# -- trained-subset checkpoints ------------------------------------------------------------------


def perturb(model, selection, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for params in apply_selection(model, selection).values():
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen))


def logits(model):
    with torch.no_grad():
        return model(input_ids=batch()).logits


def test_save_and_load_selected_round_trip(tmp_path, small_selection):
    trained = gpt2()
    perturb(trained, small_selection)
    path = tmp_path / "subset.safetensors"
    save_selected(trained, small_selection, path)

    fresh = gpt2()
    assert not torch.equal(logits(fresh), logits(trained))
    assert load_selected(fresh, path) == small_selection
    assert torch.equal(logits(fresh), logits(trained))
    full_bytes = sum(p.numel() * p.element_size() for p in trained.parameters())
    subset_bytes = sum(
        p.numel() * 4 for g in small_selection.groups for p in group_parameters(trained, include_frozen=True)[g]
    )
    assert subset_bytes < os.path.getsize(path) < subset_bytes + 8192 < full_bytes / 10

    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        keys = set(f.keys())
    assert keys == names_with_segments(trained, SEGMENTS["norm"] | SEGMENTS["lora_B"])


def test_save_selected_tied_embedding_once(tmp_path):
    trained = gpt2()
    selection = Selection.from_groups(["embed"], numel_table(trained))
    perturb(trained, selection)
    path = tmp_path / "embed.safetensors"
    save_selected(trained, selection, path)
    fresh = gpt2()
    load_selected(fresh, path)
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        assert set(f.keys()) == {
            "base_model.model.transformer.wte.weight",
            "base_model.model.transformer.wpe.weight",
        }
    head = fresh.base_model.model.lm_head.weight
    assert head is fresh.base_model.model.transformer.wte.weight
    assert torch.equal(logits(fresh), logits(trained))


def params_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_unchanged(model, snapshot):
    assert all(torch.equal(p, snapshot[n]) for n, p in model.named_parameters())


def test_load_selected_shape_mismatch_changes_nothing(tmp_path, small_selection):
    path = tmp_path / "subset.safetensors"
    save_selected(gpt2(), small_selection, path)
    other = gpt2(n_embd=128)
    snapshot = params_snapshot(other)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch .*base_model\.model\.transformer\.h\.0\.ln_1\.weight: file "
        r"\(64,\) vs model \(128,\)",
    ):
        load_selected(other, path)
    assert_unchanged(other, snapshot)


def test_load_selected_onto_model_without_lora(tmp_path, small_selection):
    path = tmp_path / "subset.safetensors"
    save_selected(gpt2(), small_selection, path)
    with pytest.raises(ValueError, match=r"wrap the model with peft LoRA first"):
        load_selected(gpt2(lora=False), path)


def test_load_selected_missing_and_unexpected_names(tmp_path, small_selection):
    from safetensors.torch import load_file, save_file

    trained = gpt2()
    perturb(trained, small_selection)
    path = tmp_path / "subset.safetensors"
    save_selected(trained, small_selection, path)
    tensors = load_file(path)
    metadata = {"adapeft_optim.selection": small_selection.to_json()}
    dropped = "base_model.model.transformer.ln_f.bias"
    partial = {n: t for n, t in tensors.items() if n != dropped}
    save_file({**partial, "stray.weight": torch.zeros(3)}, tmp_path / "bad.safetensors", metadata)

    fresh = gpt2()
    snapshot = params_snapshot(fresh)
    with pytest.raises(
        ValueError,
        match=r"does not match the selected groups \['norm', 'lora_B'\] of this model: missing "
        r"\['base_model\.model\.transformer\.ln_f\.bias'\], unexpected \['stray\.weight'\]"
        r".*strict=False",
    ):
        load_selected(fresh, tmp_path / "bad.safetensors")
    assert_unchanged(fresh, snapshot)

    load_selected(fresh, tmp_path / "bad.safetensors", strict=False)
    params = dict(fresh.named_parameters())
    assert torch.equal(params[dropped], snapshot[dropped])
    assert all(torch.equal(params[n], t) for n, t in partial.items())


def test_load_selected_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match=r"has no 'adapeft_optim\.selection' metadata"):
        load_selected(gpt2(), tmp_path / "plain.safetensors")
    meta = {"adapeft_optim.selection": make_selection().to_json()}
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors", meta)
    with pytest.raises(ValueError, match=r"none of the 1 tensors .*'w'"):
        load_selected(gpt2(), tmp_path / "foreign.safetensors", strict=False)


def test_save_selected_needs_a_selection(tmp_path):
    with pytest.raises(TypeError, match=r"save_selected needs a Selection"):
        save_selected(gpt2(), ["norm"], tmp_path / "x.safetensors")
