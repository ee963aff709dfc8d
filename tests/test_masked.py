"""Selection from a real warm-up, masked mode and resume across the switch (design §6-§7)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from adapeft_optim import GeNAdaPEFT, group_parameters, select_groups


def lora_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=16,
        tie_word_embeddings=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = get_peft_model(GPT2LMHeadModel(cfg), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(n)]


def make_opt(model, holder, **kwargs):
    kwargs.setdefault("lazy", 2)
    return GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        closure=lambda: model(holder[0], labels=holder[0]).loss,
        groups=group_parameters(model),
        **kwargs,
    )


def run(model, opt, holder, xs):
    for x in xs:
        holder[0] = x
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def warmed():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, lazy=1)
    run(model, opt, holder, batches(8))
    return model, opt


def test_warmup_probes_every_group_and_accumulates_the_ppi_of_valued_probes(warmed):
    _, opt = warmed
    assert set(opt.appi) == {"lora_A", "lora_B", "head", "norm", "bias", "embed", "others"}
    for name, appi in opt.appi.items():
        records = [r for r in opt.history if r["group"] == name]
        assert [r["step"] for r in records] == list(range(8))
        assert appi == pytest.approx(sum(r["ppi"] for r in records if r["case"] is not None), rel=1e-12)
        # Accepted fits are valued at the paper's b²/A per parameter, the others by the trust region.
        for r in records:
            if r["accepted"]:
                assert r["case"] == "interior" and r["ppi"] == pytest.approx(r["b"] ** 2 / (r["A"] * opt.numel[name]))
    # lora_B starts at zero, so lora_A's gradient, and its direction, is exactly zero at step 0
    first = next(r for r in opt.history if r["group"] == "lora_A")
    assert first["b"] == 0.0 and not first["accepted"]
    assert sum(a > 0 for a in opt.appi.values()) >= 5


@pytest.mark.filterwarnings("ignore::adapeft_optim.selection.EmptySelectionWarning")
def test_select_solves_the_optimizers_own_table(warmed):
    # The knapsack itself is tested against brute force in test_selection.py; here: on a real
    # LoRA warm-up the optimizer finds lora_A's dependency (lora_B starts at zero, so lora_A is
    # only worth something with it) and opt.select hands its APPI, sizes, dependencies and the
    # method to select_groups.
    _, opt = warmed
    assert opt.requires == {"lora_A": ("lora_B",)}
    for budget in (0.05, 0.5):
        chosen = {}
        for method in ("greedy", "prefix", "exact"):
            chosen[method] = opt.select(budget, method)
            assert chosen[method] == select_groups(opt.appi, opt.numel, budget, method, requires=opt.requires)
        if budget == 0.05:  # a budget where the methods disagree, so the method must reach the solver
            assert len({sel.groups for sel in chosen.values()}) > 1


def state_bytes(opt):
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def test_masked_mode_freezes_unselected_groups_for_100_steps():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, lazy=4)
    xs = batches(108)
    run(model, opt, holder, xs[:8])
    groups = group_parameters(model)
    selected = ("lora_B", "norm")
    opt.mask(selected)
    frozen = {id(p): p.detach().clone() for n, ps in groups.items() if n not in selected for p in ps}
    assert frozen
    run(model, opt, holder, xs[8:])
    for name, params in groups.items():
        for p in params:
            if name in selected:
                assert p.requires_grad
                assert opt.state[p]["step"] == 108
            else:
                assert torch.equal(p, frozen[id(p)])
                assert not p.requires_grad and p.grad is None and p not in opt.state
    # probes after the switch cover the selected groups only, and APPI keeps growing for them
    after = [r for r in opt.history if r["step"] >= 8]
    assert {r["group"] for r in after} == set(selected)
    # state bytes are those of a hand-frozen AdamW over the same parameters
    ref = torch.optim.AdamW([p for n in selected for p in groups[n]], lr=1e-3)
    for n in selected:
        for p in groups[n]:
            ref.state[p] = {k: torch.zeros_like(v) for k, v in opt.state[p].items()}
    assert state_bytes(opt) == state_bytes(ref)
    expected = sum(
        2 * p.numel() * p.element_size() + 4 for n in selected for p in groups[n]
    )  # exp_avg, exp_avg_sq, step
    assert state_bytes(opt) == expected


def clone_run(sd_bytes, model_state, **kwargs):
    model = lora_gpt2(seed=123)  # different init, overwritten by the checkpoint
    model.load_state_dict(model_state)
    holder = [None]
    opt = make_opt(model, holder, **kwargs)
    opt.load_state_dict(torch.load(io.BytesIO(sd_bytes), weights_only=False))
    return model, opt, holder


@pytest.mark.parametrize("save_at", [5, 9])
def test_resume_across_the_mask_switch_is_bit_identical(save_at):
    xs = batches(16)
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, budget=0.3, select_after=7)
    run(model, opt, holder, xs[:save_at])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    model_state = copy.deepcopy(model.state_dict())
    logged = len(opt.history)  # a log, not checkpoint state
    run(model, opt, holder, xs[save_at:])
    assert opt.masked is not None

    model2, opt2, holder2 = clone_run(buf.getvalue(), model_state, budget=0.3, select_after=7)
    run(model2, opt2, holder2, xs[save_at:])
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
        assert p1.requires_grad == p2.requires_grad
    assert opt2.masked == opt.masked
    assert opt2.appi == opt.appi and opt2.lrs == opt.lrs
    assert opt2.history == opt.history[logged:]
    assert opt2.selection == opt.selection


def test_select_after_switches_with_the_selection_of_that_moment():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, budget=0.3, select_after=6)
    xs = batches(7)
    run(model, opt, holder, xs[:5])
    assert opt.masked is None
    run(model, opt, holder, xs[5:6])
    expected = select_groups(opt.appi, opt.numel, 0.3, requires=opt.requires)
    assert opt.masked is not None
    assert set(opt.masked) == set(expected.groups)
    assert opt.selection == expected


def test_stable_ranking_switches_once_the_order_stops_changing():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, lazy=1, budget=0.3, stable_probes=3)
    from adapeft_optim.selection import greedy_order

    rankings = []
    for x in batches(40):
        if opt.masked is not None:
            break
        run(model, opt, holder, [x])
        rankings.append(tuple(greedy_order(opt.appi, opt.numel)))
    assert opt.masked is not None
    # it switched exactly when the last 4 rankings (3 unchanged probes) agreed
    assert len(set(rankings[-4:])) == 1
    for i in range(3, len(rankings) - 1):
        assert len(set(rankings[i - 3 : i + 1])) > 1 or not all(s > 0 for s in opt.appi.values())


def test_mask_errors_leave_the_model_untouched():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder)
    with pytest.raises(ValueError, match=r"unknown group name\(s\) \['lora_C'\]"):
        opt.mask(["lora_B", "lora_C"])
    with pytest.raises(ValueError, match="selection is empty"):
        opt.mask([])
    assert all(p.requires_grad for p in model.parameters())
    assert opt.masked is None
    with pytest.raises(RuntimeError, match="needs at least one valued probe"):
        opt.select(0.1)
    opt.mask(["norm"])
    with pytest.raises(RuntimeError, match="already in masked mode"):
        opt.mask(["head"])


def test_auto_switch_needs_a_budget():
    model = lora_gpt2()
    with pytest.raises(ValueError, match="need budget="):
        make_opt(model, [None], select_after=3)
    with pytest.raises(ValueError, match="Invalid budget"):
        make_opt(model, [None], budget=1.5, select_after=3)


def test_auto_switch_with_a_budget_nothing_fits_warns_and_keeps_training_everything():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, budget=1e-6, select_after=2)
    with pytest.warns(RuntimeWarning, match="no group fits budget=1e-06"):
        run(model, opt, holder, batches(3))
    assert opt.masked is None and opt.budget is None
    assert all(p.requires_grad for p in model.parameters())


def test_mask_at_budget_postpones_before_any_accepted_probe_then_switches():
    model = lora_gpt2()
    holder = [None]
    opt = make_opt(model, holder, lazy=1)
    with pytest.warns(RuntimeWarning, match="postponed: no probe has been valued yet"):
        assert opt.mask_at_budget(0.3) is None
    assert opt.masked is None
    run(model, opt, holder, batches(3))
    selection = opt.mask_at_budget(0.3)
    assert selection == select_groups(opt.appi, opt.numel, 0.3, requires=opt.requires)
    assert opt.masked == tuple(n for n in opt.names if n in selection.groups)
