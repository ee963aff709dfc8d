"""Tests for adapeft_optim.selection: knapsack selection, frontiers, Selection, models."""

from __future__ import annotations

import itertools
import json
import math
import os
from fractions import Fraction

import peft
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import adapeft_optim.selection as selection_module
from adapeft_optim.grouping import group_parameters
from adapeft_optim.selection import (
    FrontierPoint,
    Selection,
    apply_selection,
    greedy_order,
    load_selected,
    pareto_frontier,
    save_selected,
    select_groups,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)

# -- brute-force references (exact rational arithmetic, every subset) ----------------------------

NAMES = ("lora_A", "lora_B", "head", "norm", "bias", "embed", "others", "extra")


def rank_order(appi, numel):
    """The documented greedy order: APPI descending, then fewer parameters, then name."""
    return sorted(appi, key=lambda g: (-appi[g], numel[g], g))


def eligible(appi, numel):
    return [g for g in rank_order(appi, numel) if appi[g] > 0 and math.isfinite(appi[g])]


def exact_value(appi, numel, subset):
    return sum((Fraction(appi[g]) * numel[g] for g in subset), Fraction(0))


def all_subsets(names):
    for r in range(len(names) + 1):
        yield from itertools.combinations(names, r)


def canonical(subsets, order):
    """Among exact ties, the subset holding the earliest groups in greedy order."""
    return min(subsets, key=lambda s: sorted(order.index(g) for g in s))


def reference_exact(appi, numel, budget):
    total = sum(numel.values())
    names = eligible(appi, numel)
    feasible = [s for s in all_subsets(names) if sum(numel[g] for g in s) / total <= budget]
    best = max(exact_value(appi, numel, s) for s in feasible)
    ties = [s for s in feasible if exact_value(appi, numel, s) == best]
    fewest = min(sum(numel[g] for g in s) for s in ties)
    ties = [s for s in ties if sum(numel[g] for g in s) == fewest]
    chosen = canonical(ties, names)
    return tuple(sorted(chosen, key=names.index))


def reference_greedy(appi, numel, budget):
    total = sum(numel.values())
    prefix = []
    for g in eligible(appi, numel):
        if sum(numel[h] for h in prefix + [g]) / total > budget:
            break
        prefix.append(g)
    return tuple(prefix)


def reference_frontier(appi, numel):
    total = sum(numel.values())
    names = eligible(appi, numel)
    scored = [
        (sum(numel[g] for g in s), exact_value(appi, numel, s), s) for s in all_subsets(names)
    ]
    front = [
        (w, v, s)
        for w, v, s in scored
        if not any(w2 <= w and v2 >= v and (w2 < w or v2 > v) for w2, v2, _ in scored)
    ]
    points = {}
    for w, v, s in front:
        points.setdefault((w, v), []).append(s)
    return [
        FrontierPoint(w / total, float(v), tuple(sorted(canonical(ss, names), key=names.index)))
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
def tables_and_budgets(draw):
    appi, numel = draw(tables())
    total = sum(numel.values())
    # Budgets exactly at a subset's fraction probe the boundary of the capacity test.
    subset = draw(st.lists(st.sampled_from(list(numel)), unique=True))
    budget = draw(
        st.one_of(
            st.floats(0.0, 1.0),
            st.just(sum(numel[g] for g in subset) / total),
            st.sampled_from([0.0, 1.0]),
        )
    )
    return appi, numel, budget


def has_positive(appi):
    return any(a > 0 for a in appi.values())


# -- selection properties ------------------------------------------------------------------------


@settings(deadline=None)
@given(tables_and_budgets())
def test_greedy_is_largest_fitting_prefix(case):
    appi, numel, budget = case
    if not has_positive(appi):
        with pytest.raises(ValueError, match="all APPI values are zero"):
            select_groups(appi, numel, budget)
        return
    sel = select_groups(appi, numel, budget)
    assert sel.groups == reference_greedy(appi, numel, budget)
    assert sel.fraction <= budget
    assert sel.method == "greedy" and sel.budget == budget


@settings(deadline=None)
@given(tables_and_budgets())
def test_exact_matches_brute_force_and_beats_greedy(case):
    appi, numel, budget = case
    if not has_positive(appi):
        with pytest.raises(ValueError, match="all APPI values are zero"):
            select_groups(appi, numel, budget, method="exact")
        return
    exact = select_groups(appi, numel, budget, method="exact")
    greedy = select_groups(appi, numel, budget, method="greedy")
    assert exact.groups == reference_exact(appi, numel, budget)
    assert exact_value(appi, numel, exact.groups) >= exact_value(appi, numel, greedy.groups)
    assert exact.fraction <= budget
    assert exact.value == float(exact_value(appi, numel, exact.groups))


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
        (), ("y",), ("x",), ("y", "z"), ("x", "y"), ("x", "y", "z")
    ]


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
    assert select_groups(appi, numel, 0.0).groups == ()
    assert select_groups(appi, numel, 0.3).groups == ("a", "b")  # exactly 3 / 10
    assert select_groups(appi, numel, 0.29999).groups == ("a",)
    # The zero-APPI group stays out even when everything fits.
    assert select_groups(appi, numel, 1.0).groups == ("a", "b", "c")
    assert select_groups(appi, numel, 1.0, method="exact").groups == ("a", "b", "c")


def test_non_positive_and_infinite_appi_are_never_selected():
    appi = {"pos": 1.0, "neg": -5.0, "inf": math.inf, "ninf": -math.inf, "zero": 0.0}
    numel = dict.fromkeys(appi, 1)
    for method in ("greedy", "exact"):
        assert select_groups(appi, numel, 1.0, method=method).groups == ("pos",)
    # Unselectable groups go last, still by APPI descending.
    assert greedy_order(appi, numel) == ["pos", "inf", "zero", "neg", "ninf"]
    assert [p.groups for p in pareto_frontier(appi, numel, "exact")] == [(), ("pos",)]


def test_frontier_of_table_without_positive_appi_is_empty_set():
    appi, numel = {"a": 0.0, "b": 0.0}, {"a": 1, "b": 2}
    for method in ("greedy", "exact"):
        assert pareto_frontier(appi, numel, method) == [FrontierPoint(0.0, 0.0, ())]
    assert greedy_order(appi, numel) == ["a", "b"]


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
        (dict(method="dp"), ValueError, r"Unknown method 'dp'; use one of 'greedy', 'exact'"),
        (dict(appi={"a": 1.0}), ValueError,
         r"appi and numel must have the same group names; only in appi: \[\], "
         r"only in numel: \['b'\]"),
        (dict(numel={"a": 10, "b": 0}), ValueError,
         r"numel of group 'b' must be a positive parameter count, got 0"),
        (dict(numel={"a": 10, "b": -3}), ValueError, r"numel of group 'b' .* got -3"),
        (dict(numel={"a": 10, "b": 2.5}), TypeError, r"numel of group 'b' must be an int"),
        (dict(appi={"a": 1.0, "b": math.nan}), ValueError, r"APPI of group 'b' is NaN"),
        (dict(appi={"a": 1.0, "b": "x"}), TypeError, r"APPI of group 'b' must be a real number"),
        (dict(appi={}, numel={}), ValueError, r"appi is empty"),
        (dict(appi={"a": 0.0, "b": 0.0}), ValueError,
         r"all APPI values are zero .*select\(\) needs at least one accepted probe; run more "
         r"steps or lower r2_min"),
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
    monkeypatch.setattr(selection_module, "_MAX_PARETO_WORK", 2**12)
    appi = {f"g{i}": 1.0 for i in range(12)}
    numel = {f"g{i}": 2**i for i in range(12)}
    with pytest.raises(
        ValueError, match=r"over 12 groups has too many Pareto-optimal subsets.*method='greedy'"
    ):
        pareto_frontier(appi, numel, method="exact")
    with pytest.raises(ValueError, match=r"too many Pareto-optimal subsets"):
        select_groups(appi, numel, 1.0, method="exact")
    monkeypatch.setattr(selection_module, "_MAX_PARETO_WORK", 2**14)
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
        "method='greedy', budget=0.02)"
    )


@settings(deadline=None)
@given(tables_and_budgets(), st.sampled_from(["greedy", "exact"]))
def test_selection_json_round_trip(case, method):
    appi, numel, budget = case
    if not has_positive(appi):
        return
    sel = select_groups(appi, numel, budget, method=method)
    back = Selection.from_json(sel.to_json())
    assert back == sel
    assert all(back.appi[g].hex() == sel.appi[g].hex() for g in appi)
    assert list(back.numel) == list(sel.numel) and back.groups == sel.groups


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
        ("[1, 2]", r"expected a JSON object with keys \['groups', 'numel', 'appi', 'method', "
                   r"'budget'\]"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "budget"}),
         r"missing key\(s\) \['budget'\]"),
        (json.dumps({k: v for k, v in GOOD.items() if k not in ("appi", "groups")}),
         r"missing key\(s\) \['groups', 'appi'\]"),
        (json.dumps({**GOOD, "format": "other"}), r"format is 'other'"),
        (json.dumps({**GOOD, "version": 7}), r"version 7 is not supported"),
        (json.dumps({**GOOD, "groups": "norm"}), r"'groups' must be a list of names"),
        (json.dumps({**GOOD, "groups": ["nope"]}), r"selected group\(s\) \['nope'\] are not among"),
        (json.dumps({**GOOD, "groups": ["norm", "norm"]}), r"more than once"),
        (json.dumps({**GOOD, "numel": {**GOOD["numel"], "head": "1000"}}),
         r"numel of group 'head' must be an int"),
        (json.dumps({**GOOD, "appi": {"head": 1.0}}), r"same group names"),
        (json.dumps({**GOOD, "method": "random"}), r"Unknown method 'random'"),
        (json.dumps({**GOOD, "budget": 2}), r"Invalid budget: 2"),
        (json.dumps({**GOOD, "budget": 0.001}), r"more than the budget 0\.001"),
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
        n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=128, n_positions=32,
        bos_token_id=0, eos_token_id=0,
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
        (["x"], {"groups": {"x": [torch.nn.Parameter(torch.zeros(2))]}}, ValueError,
         r"group 'x' holds a tensor of shape \(2,\) that is not a parameter of this model"),
    ],
)
def test_apply_selection_errors(selection, kwargs, error, match):
    model = gpt2()
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(error, match=match):
        apply_selection(model, selection, **kwargs)
    assert [p.requires_grad for p in model.parameters()] == before


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
    subset_bytes = sum(p.numel() * 4 for g in small_selection.groups
                       for p in group_parameters(trained, include_frozen=True)[g])
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
