"""Tests for GeNAdaPEFT (design §3, §4, §7), each against an independent expectation.

The oracles: the bare inner optimizer on a deep-copied twin, a plain AdamW loaded with the
pre-step state, closed forms on a quadratic loss, exact Hessian-vector products by double
backward on a float64 copy, and a run resumed from a checkpoint against an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from adapeft_optim import GeNAdaPEFT, group_parameters
from adapeft_optim.fit import newton_update

transformers.logging.set_verbosity_error()

VOCAB = 128


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    # spinning threads slow this file down by an order of magnitude (measured: 12 s vs 290 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------
# tiny models, data and oracles


def gpt2(dtype=torch.float32, *, dropout=0.0, tie=True, seed=0):
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=tie,
    )
    config._attn_implementation = "eager"  # plain ops all the way down, for double backward
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).to(dtype)
    return model.train(dropout > 0)


def batches(n, seed=0, size=(4, 16)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, size, generator=g) for _ in range(n)]


def lm_loss(model, ids):
    # Our own loss in the model's dtype: transformers' built-in loss upcasts logits to float32
    # only, which would make a float64 model's loss a float32 number.
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def backward(model, opt, ids):
    opt.zero_grad()
    lm_loss(model, ids).backward()


def train(model, opt, data, *, wrapped=True):
    for ids in data:
        backward(model, opt, ids)
        if wrapped:
            opt.step(lambda ids=ids: lm_loss(model, ids))
        else:
            opt.step()


class Quadratic(nn.Module):
    """L(w) = ½ wᵀQw − cᵀw over the concatenation of three parameter tensors (float64)."""

    def __init__(self, sizes=(3, 4, 5), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = sum(sizes)
        M = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.register_buffer("Q", M @ M.T / n + 0.5 * torch.eye(n, dtype=torch.float64))
        self.register_buffer("c", torch.randn(n, generator=g, dtype=torch.float64))
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in sizes])
        self.sizes = sizes

    def groups(self):
        return {name: [p] for name, p in zip(("a", "b", "c"), self.ws)}

    def flat(self):
        return torch.cat([p.detach() for p in self.ws])

    def blocks(self):
        """(name, slice) of each group in the flat vector."""
        out, start = [], 0
        for name, s in zip(("a", "b", "c"), self.sizes):
            out.append((name, slice(start, start + s)))
            start += s
        return out

    def forward(self):
        w = torch.cat(list(self.ws))
        return 0.5 * w @ self.Q @ w - self.c @ w


def adamw_direction(inner):
    """AdamW's next update per unit lr, by its formula from the pre-step state, in float64."""
    d = {}
    for g in inner.param_groups:
        beta1, beta2 = g["betas"]
        for p in g["params"]:
            if p.grad is None:
                continue
            st = inner.state.get(p) or {}
            t = int(st["step"]) + 1 if st else 1
            grad, w = p.grad.double(), p.detach().double()
            m = (1 - beta1) * grad + (beta1 * st["exp_avg"].double() if st else 0.0)
            v = (1 - beta2) * grad * grad + (beta2 * st["exp_avg_sq"].double() if st else 0.0)
            step = (m / (1 - beta1**t)) / (v.sqrt() / math.sqrt(1 - beta2**t) + g["eps"])
            d[p] = g["weight_decay"] * w + step
    return d


def exact_slope_curvature(model, ids, directions, names):
    """b = Gᵀd and A = dᵀHd per group, by double backward on a float64 copy of ``model``.

    ``directions`` maps a parameter of ``model`` to its d; ``names`` maps it to its group.
    """
    params = list(model.parameters())
    model64 = copy.deepcopy(model).double()
    params64 = list(model64.parameters())
    grads = torch.autograd.grad(lm_loss(model64, ids), params64, create_graph=True)
    out = {}
    for name in dict.fromkeys(names[p] for p in params if p in directions):
        vec = [
            directions[p] if p in directions and names[p] == name else torch.zeros_like(q)
            for p, q in zip(params, params64)
        ]
        b = sum((g * v).sum() for g, v in zip(grads, vec)).item()
        hv = torch.autograd.grad(grads, params64, grad_outputs=vec, retain_graph=True, allow_unused=True)
        A = sum((h * v).sum() for h, v in zip(hv, vec) if h is not None).item()
        out[name] = (b, A)
    return out


def copy_with_grads(obj, model):
    """Deep copy of ``obj`` (a model, or a (model, optimizer) tuple whose model is ``model``) with
    the gradients: ``nn.Parameter.__deepcopy__`` drops ``.grad``."""
    copied = copy.deepcopy(obj)
    twin = copied[0] if isinstance(copied, tuple) else copied
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    return copied


def wrap_adamw(model, lazy, lr=1e-3, **kwargs):
    inner = torch.optim.AdamW(model.parameters(), lr=lr, **kwargs)
    return GeNAdaPEFT(inner, groups=group_parameters(model), lazy=lazy)


def fingerprint(p):
    """What a step must not change about a parameter besides its values."""
    return (
        p.is_leaf,
        p.requires_grad,
        p.data_ptr(),
        sorted(vars(p)),
        p._backward_hooks,
        getattr(p, "_post_accumulate_grad_hooks", None),
        type(p),
    )


def group_of(opt):
    return {p: g["adapeft_name"] for g in opt.param_groups for p in g["params"]}


def params_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def same_number(x, y):
    both_float = isinstance(x, float) and isinstance(y, float)
    return x == y or (both_float and math.isnan(x) and math.isnan(y))


def same_records(h1, h2):
    return len(h1) == len(h2) and all(
        r1.keys() == r2.keys() and all(same_number(r1[k], r2[k]) for k in r1) for r1, r2 in zip(h1, h2)
    )


# ---------------------------------------------------------------------------------------
# the torch.optim contract (§3, §4.1)


def test_is_an_optimizer_sharing_the_inner_groups_state_and_defaults():
    model = gpt2()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=0)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state
    assert opt.defaults is inner.defaults
    train(model, opt, batches(1))
    assert len(opt.state) == len(list(model.parameters())) and opt.state is inner.state


def test_param_groups_are_split_per_named_group_keeping_hyper_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    lin0, norm, lin2 = model[0], model[1], model[2]
    inner = torch.optim.AdamW(
        [
            {"params": [lin0.weight, lin0.bias, norm.weight, norm.bias], "weight_decay": 0.1, "betas": (0.9, 0.99)},
            {"params": [lin2.weight, lin2.bias], "weight_decay": 0.0, "betas": (0.8, 0.95), "lr": 5e-4},
        ],
        lr=1e-3,
    )
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=0)
    # (name, params, lr, weight_decay, betas): inner group order, then named group order
    expected = [
        ("norm", [norm.weight, norm.bias], 1e-3, 0.1, (0.9, 0.99)),
        ("bias", [lin0.bias], 1e-3, 0.1, (0.9, 0.99)),
        ("others", [lin0.weight], 1e-3, 0.1, (0.9, 0.99)),
        ("bias", [lin2.bias], 5e-4, 0.0, (0.8, 0.95)),
        ("others", [lin2.weight], 5e-4, 0.0, (0.8, 0.95)),
    ]
    got = opt.param_groups
    assert len(got) == len(expected)
    for g, (name, params, lr, wd, betas) in zip(got, expected):
        assert g["adapeft_name"] == name
        assert [id(p) for p in g["params"]] == [id(p) for p in params]
        assert g["lr"] == lr and g["adapeft_base_lr"] == lr
        assert g["weight_decay"] == wd and tuple(g["betas"]) == betas
        assert g["eps"] == 1e-8 and g["amsgrad"] is False
    assert opt.lrs == {"norm": 1e-3, "bias": 1e-3, "others": 1e-3}
    assert opt.numel == {"norm": 8, "bias": 6, "others": 20}


def test_without_groups_each_inner_param_group_is_one_group():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    inner = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}], lr=0.1)
    opt = GeNAdaPEFT(inner, lazy=0)
    assert len(opt.param_groups) == 2
    names = [g["adapeft_name"] for g in opt.param_groups]
    assert len(set(names)) == 2
    assert opt.lrs == {names[0]: 0.1, names[1]: 0.5}
    assert opt.numel == {names[0]: 16, names[1]: 10}


# ---------------------------------------------------------------------------------------
# steps and the direction (§4.3)


def test_lazy_zero_is_bit_identical_to_the_bare_inner_adamw():
    model = gpt2()
    twin = copy.deepcopy(model)
    opt = wrap_adamw(model, lazy=0)
    bare = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    for ids in batches(10):
        backward(model, opt, ids)
        backward(twin, bare, ids)
        assert opt.step() is None
        bare.step()
        assert params_equal(model, twin)
    assert opt.history == []


def test_inner_optimizer_steps_exactly_once_per_step_with_probes():
    model = gpt2()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=2)
    for n, ids in enumerate(batches(5), start=1):
        train(model, opt, [ids])
        assert {int(s["step"]) for s in inner.state.values()} == {n}
    assert sorted({r["step"] for r in opt.history}) == [0, 2, 4]


def test_probe_step_update_equals_plain_adamw_at_the_new_lrs():
    model = gpt2(torch.float64)
    blocks0 = set(model.transformer.h[0].parameters())
    first = [p for p in model.parameters() if p in blocks0]
    rest = [p for p in model.parameters() if p not in blocks0]
    inner = torch.optim.AdamW(
        [
            {"params": first, "weight_decay": 0.1, "betas": (0.9, 0.99)},
            {"params": rest, "weight_decay": 0.0, "betas": (0.8, 0.95)},
        ],
        lr=1e-3,
    )
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=2)
    data = batches(6, seed=3)
    changed = set()
    for k, ids in enumerate(data):
        backward(model, opt, ids)
        pre_model = copy_with_grads(model, model)
        pre_state = copy.deepcopy(inner.state_dict())
        old_lrs = dict(opt.lrs)
        opt.step(lambda: lm_loss(model, ids))
        new_lrs = opt.lrs
        pre_params = dict(zip(model.parameters(), pre_model.parameters()))
        plain = torch.optim.AdamW([{"params": [pre_params[p] for p in g["params"]]} for g in opt.param_groups], lr=1.0)
        plain.load_state_dict(pre_state)
        for g, pg in zip(opt.param_groups, plain.param_groups):
            pg["lr"] = new_lrs[g["adapeft_name"]]
        plain.step()
        if k % 2:  # not a probe step: the very same inner step
            assert new_lrs == old_lrs
            assert params_equal(model, pre_model)
        else:
            changed |= {n for n in new_lrs if new_lrs[n] != old_lrs[n]}
            for p, q in zip(model.parameters(), pre_model.parameters()):
                assert (p - q).abs().max().item() <= 1e-10
    assert changed  # the probes did move some lrs, so the comparison is not at the old ones


def test_quadratic_records_are_the_closed_form_slope_and_curvature():
    model = Quadratic()
    momentum, wd, lr = 0.5, 0.1, 0.3
    inner = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    # Per-group Newton updates alone; the joint check has its own closed-form test.
    opt = GeNAdaPEFT(inner, closure=model, groups=model.groups(), lazy=1, joint_check=False, max_interval=1)
    Q, c = model.Q, model.c
    buf = None
    newton = {name: lr for name, _ in model.blocks()}
    rejected = 0
    for step in range(5):
        opt.zero_grad()
        model().backward()
        w = model.flat()
        G = Q @ w - c
        # SGD's update per unit lr: momentum buffer of (G + wd·w), started at its first value.
        buf = G + wd * w if buf is None else momentum * buf + G + wd * w
        n0 = len(opt.history)
        opt.step()
        records = {r["group"]: r for r in opt.history[n0:]}
        assert list(records) == ["a", "b", "c"]
        expected_w = torch.empty_like(w)
        for name, sl in model.blocks():
            d = buf[sl]
            b = float(G[sl] @ d)
            A = float(d @ Q[sl, sl] @ d)
            r = records[name]
            assert r["step"] == step
            assert r["b"] == pytest.approx(b, rel=1e-8)
            assert r["A"] == pytest.approx(A, rel=1e-8)
            assert r["r2"] == pytest.approx(1.0, abs=1e-12)
            if b > 0:  # A > 0 always: Q is positive definite
                assert r["accepted"] and r["reason"] is None
                assert r["ppi"] == pytest.approx(b * b / (A * d.numel()), rel=1e-8)
                newton[name] = newton_update(newton[name], b / A, 0.9, 2.0)
            else:  # momentum can point uphill
                assert not r["accepted"] and r["reason"] == "non-positive slope" and r["ppi"] == 0.0
                rejected += 1
            assert r["newton_lr"] == pytest.approx(newton[name], rel=1e-9)
            assert opt.lrs[name] == pytest.approx(newton[name], rel=1e-9)
            expected_w[sl] = w[sl] - newton[name] * d
        torch.testing.assert_close(model.flat(), expected_w, rtol=0, atol=1e-12)
    assert 0 < rejected < 15  # both paths taken
    for name, _ in model.blocks():
        accepted = sum(r["ppi"] for r in opt.history if r["group"] == name)
        assert opt.appi[name] == pytest.approx(accepted, rel=1e-12)


def test_settled_groups_are_probed_less_often_and_appi_weights_them():
    """Note [Settled groups], replayed from the records: a group's next probe comes after the
    interval its last probe earned (doubled when accepted and the lr moved by at most 5%, kept on a
    non-positive slope, else 1), and APPI sums weight · PPI over the valued probes."""
    model = Quadratic()
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.05),
        closure=model,
        groups=model.groups(),
        lazy=2,
        joint_check=False,
        max_interval=4,
        slope="stencil",  # with a backward slope the curvature is reused instead (next test)
    )
    for _ in range(120):
        opt.zero_grad()
        model().backward()
        opt.step()
    probe_steps = 60
    doubled = reset = 0
    for name in opt.names:
        records = [r for r in opt.history if r["group"] == name]
        at = [r["step"] // 2 for r in records]
        assert at[0] == 0 and records[0]["weight"] == 1
        lr_before = 0.05
        for r, nxt, p, q in zip(records, records[1:], at, at[1:]):
            settled = r["accepted"] and abs(r["newton_lr"] / lr_before - 1) <= 0.05
            if settled:
                expected = min(2 * r["weight"], 4)
                doubled += expected > r["weight"]
            elif r["reason"] == "non-positive slope":
                expected = r["weight"]
            else:
                expected = 1
                reset += r["weight"] > 1
            assert nxt["weight"] == expected and q - p == expected, (name, r["step"])
            lr_before = r["newton_lr"]
        assert at[-1] + (records[-1]["weight"] if len(records) > 1 else 1) >= probe_steps - 4
        valued = sum(r["weight"] * r["ppi"] for r in records if r["case"] is not None)
        assert opt.appi[name] == pytest.approx(valued, rel=1e-12)
    assert len(opt.history) < 3 * probe_steps and doubled > 0  # fewer probes than groups x probe steps


def test_backward_slope_measures_curvature_on_a_schedule_and_reuses_it_in_between():
    """Note [Curvature reuse]: every group gets a fresh-slope record at every probe step; its
    curvature is measured after 2, then 4 probe steps while accepted fits find it within 50% of
    the kept one (at the next probe step otherwise), and in between the record carries the last
    measured A with the exact slope."""
    model = Quadratic()
    calls = []
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.01),  # A = GᵀQG per unit lr² moves slowly at this lr
        closure=lambda: calls.append(1) or model(),
        groups=model.groups(),
        lazy=2,
        joint_check=False,
        max_interval=4,
    )
    measured_per_step = []
    for step in range(120):
        opt.zero_grad()
        model().backward()
        G = torch.cat([p.grad for p in model.ws])
        n0, c0 = len(opt.history), len(calls)
        opt.step()
        if step % 2 == 0:
            new = opt.history[n0:]
            assert [r["group"] for r in new] == ["a", "b", "c"] and all(r["weight"] == 1 for r in new)
            measured = [r for r in new if not r["reused"]]
            assert len(calls) - c0 == 1 + 2 * len(measured)  # L0 with the slopes, ±2 per measured group
            measured_per_step.append(len(measured))
            for r, (_, sl) in zip(new, model.blocks()):
                assert r["b"] == pytest.approx(float(G[sl] @ G[sl]), rel=1e-10)  # SGD: d = G, b = GᵀG
    for name in opt.names:
        records = [r for r in opt.history if r["group"] == name]
        last_A, interval, due = None, 1, 0
        for k, r in enumerate(records):  # one record per probe step k
            assert r["reused"] == (k < due), (name, k)
            if r["reused"]:
                assert r["A"] == pytest.approx(last_A, rel=1e-12)
                continue
            if r["accepted"]:
                stable = last_A is not None and abs(r["A"] / last_A - 1) <= 0.5
                interval = min(2 * interval, 4) if stable else 1
                last_A = r["A"]
            elif r["reason"] != "non-positive slope":
                interval = 1
            due = k + interval
        valued = sum(r["ppi"] for r in records if r["case"] is not None)
        assert opt.appi[name] == pytest.approx(valued, rel=1e-12)
    reused = sum(r["reused"] for r in opt.history)
    assert reused == 3 * len(measured_per_step) - sum(measured_per_step) > 40  # curvature forwards saved


def test_max_interval_one_probes_every_group_at_every_probe_step():
    model = Quadratic()
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.05), closure=model, groups=model.groups(), lazy=2, max_interval=1
    )
    for _ in range(40):
        opt.zero_grad()
        model().backward()
        opt.step()
    assert [r["step"] for r in opt.history] == [s for s in range(0, 40, 2) for _ in range(3)]
    assert all(r["weight"] == 1 for r in opt.history)


@pytest.mark.parametrize(
    ("slope", "scales"),
    [
        ("stencil", (-2, -1, 1, 2)),
        ("stencil", (-1, 1)),
        ("stencil", (1, 2)),
        ("backward", (-2, 2)),
        ("backward", (1,)),
        ("backward", (-1, 1, 3)),
    ],
)
def test_every_stencil_recovers_the_quadratic_exactly(slope, scales):
    model = Quadratic(seed=1)
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.2),
        closure=model,
        groups=model.groups(),
        lazy=1,
        slope=slope,
        scales=scales,
        joint_check=False,
    )
    calls = []
    opt.zero_grad()
    loss = model()
    loss.backward()
    G = model.Q @ model.flat() - model.c
    returned = opt.step(lambda: calls.append(1) or model())
    assert returned.item() == loss.item()  # the loss at the pre-step weights
    assert len(calls) == 1 + 3 * len(scales)  # one shared L0, then len(scales) per group
    for (name, sl), r in zip(model.blocks(), opt.history):
        assert r["group"] == name and r["accepted"]
        assert r["b"] == pytest.approx(float(G[sl] @ G[sl]), rel=1e-8)
        assert r["A"] == pytest.approx(float(G[sl] @ model.Q[sl, sl] @ G[sl]), rel=1e-8)


@pytest.mark.parametrize("slope", ["backward", "stencil"])
def test_float64_gpt2_fit_matches_exact_hessian_vector_products(slope):
    model = gpt2(torch.float64)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=1, slope=slope)
    ids = batches(1, seed=5)[0]
    backward(model, opt, ids)
    exact = exact_slope_curvature(model, ids, adamw_direction(inner), group_of(opt))
    opt.step(lambda: lm_loss(model, ids))
    records = {r["group"]: r for r in opt.history}
    assert set(records) == set(exact) == {"norm", "bias", "embed", "others"}
    for name, (b, A) in exact.items():
        assert records[name]["b"] == pytest.approx(b, rel=0.02), name
        assert records[name]["A"] == pytest.approx(A, rel=0.02), name


@pytest.mark.parametrize("slope", ["backward", "stencil"])
def test_float32_gpt2_at_lr_1e_5_accepts_probes_with_the_exact_ppi(slope):
    model = gpt2(torch.float32)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-5)
    # Every probe measures every group's line (no curvature reuse): the fits are what is tested.
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=1, slope=slope, max_interval=1)
    names = group_of(opt)
    ratios, exact_appi = [], dict.fromkeys(opt.names, 0.0)
    for ids in batches(10, seed=1):
        backward(model, opt, ids)
        snapshot = copy.deepcopy(model)
        directions = adamw_direction(inner)
        n0 = len(opt.history)
        opt.step(lambda: lm_loss(model, ids))
        accepted = [r for r in opt.history[n0:] if r["accepted"] and not r["reused"]]  # the fits
        if not accepted:
            continue
        # The exact values at the same point, for the accepted groups only (the costly part).
        pairs = list(zip(model.parameters(), snapshot.parameters()))
        snap_dirs = {q: directions[p] for p, q in pairs if p in directions}
        snap_names = {q: names[p] for p, q in pairs}
        exact = exact_slope_curvature(snapshot, ids, snap_dirs, snap_names)
        for r in accepted:
            b, A = exact[r["group"]]
            ppi = b * b / (A * opt.numel[r["group"]])
            ratios.append((r["group"], r["step"], r["ppi"] / ppi))
            exact_appi[r["group"]] += ppi
    probes = len(opt.history)
    assert probes == 40
    assert len(ratios) >= probes / 2, f"only {len(ratios)} of {probes} probes accepted"
    for name, step, ratio in ratios:
        assert 1 / 3 <= ratio <= 3, (name, step, ratio)
    for name, appi in opt.appi.items():
        assert appi == pytest.approx(exact_appi[name], rel=0.5) if exact_appi[name] else appi == 0.0


# ---------------------------------------------------------------------------------------
# probes leave no trace (§4.4)


def _acceptance(dropout):
    model = gpt2(torch.float32, dropout=dropout)
    opt = wrap_adamw(model, lazy=2)
    for ids in batches(12, seed=2):
        backward(model, opt, ids)
        rng = torch.get_rng_state()
        opt.step(lambda: lm_loss(model, ids))
        assert torch.equal(torch.get_rng_state(), rng)  # probe and non-probe steps alike
    return sum(r["accepted"] for r in opt.history) / len(opt.history)


def test_dropout_keeps_acceptance_and_step_keeps_the_rng_state():
    clean = _acceptance(0.0)
    noisy = _acceptance(0.1)
    assert clean >= 0.5
    assert noisy >= 0.8 * clean


def test_all_forwards_of_a_probe_see_the_same_randomness_under_no_grad():
    model = Quadratic()
    opt = GeNAdaPEFT(torch.optim.SGD(model.parameters(), lr=0.2), groups=model.groups(), lazy=1, max_interval=1)
    draws, grad_modes = [], []

    def closure():
        draws.append(torch.rand(()).item())
        grad_modes.append(torch.is_grad_enabled())
        return model()

    for _ in range(2):
        opt.zero_grad()
        model().backward()
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
        expected = torch.rand((), generator=gen).item()  # the draw from the pre-step state
        draws.clear()
        grad_modes.clear()
        opt.step(closure)
        # L0 with the slopes (grad on), 2 points for each of 3 groups and the joint point
        # (no grad): 8 forwards, one draw.
        assert len(draws) == 8 and set(draws) == {expected}
        assert grad_modes == [True] + [False] * 7


def test_probes_leave_no_trace_on_parameters():
    model = gpt2(torch.float32)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=2)
    params = list(model.parameters())
    names = group_of(opt)

    for k, ids in enumerate(batches(4, seed=4)):
        backward(model, opt, ids)
        before = [fingerprint(p) for p in params]
        grads = [(p.grad, p.grad.clone()) for p in params]
        w_t = [p.detach().clone() for p in params]
        twin_model, twin_inner = copy_with_grads((model, inner), model)
        probe = k % 2 == 0
        for g in twin_inner.param_groups:
            g["lr"] = 1.0 if probe else opt.lrs[g["adapeft_name"]]
        twin_inner.step()
        module_hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
        opt.step(lambda: lm_loss(model, ids))
        assert [fingerprint(p) for p in params] == before
        assert module_hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
        for p, (g, g_clone) in zip(params, grads):
            assert p.grad is g and torch.equal(g, g_clone)
        twin_params = list(twin_model.parameters())
        for p, w, u in zip(params, w_t, twin_params):
            if probe:  # w_t − lr_new·d with d = w_t − (w_t stepped at lr 1)
                expected = torch.add(w, w - u, alpha=-opt.lrs[names[p]])
            else:
                expected = u
            assert torch.equal(p.detach(), expected)


# ---------------------------------------------------------------------------------------
# faults (§4.7)


class Boom(Exception):
    pass


def _failing_closure(model, ids, fail_on):
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == fail_on:
            raise Boom("closure failed")
        return lm_loss(model, ids)

    return closure


def test_closure_raising_mid_probe_completes_the_step_at_the_old_lrs():
    model = gpt2(torch.float64)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=1)
    data = batches(3, seed=6)
    train(model, opt, data[:1])  # lrs and APPI away from their initial values
    backward(model, opt, data[1])
    twin = copy_with_grads(model, model)
    twin_opt = wrap_adamw(twin, lazy=0)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_opt.step()  # a non-probe step at the old lrs
    w_t = [p.detach().clone() for p in model.parameters()]
    appi, lrs, history = dict(opt.appi), dict(opt.lrs), copy.deepcopy(opt.history)
    rng = torch.get_rng_state()
    before = [fingerprint(p) for p in model.parameters()]
    with pytest.raises(Boom, match="closure failed"):
        opt.step(_failing_closure(model, data[1], fail_on=3))
    assert torch.equal(torch.get_rng_state(), rng)
    assert [fingerprint(p) for p in model.parameters()] == before
    assert opt.appi == appi and opt.lrs == lrs and same_records(opt.history, history)
    assert {int(s["step"]) for s in inner.state.values()} == {2}
    for p, q, w in zip(model.parameters(), twin.parameters(), w_t):
        assert torch.isfinite(p).all()
        assert not torch.equal(p.detach(), w) or torch.equal(q, w)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)
    train(model, opt, data[2:])  # the next step works
    new = opt.history[len(history) :]
    assert len(new) == 4 and all(math.isfinite(r["b"]) and math.isfinite(r["A"]) for r in new)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_failed_probe_step_still_counts_as_a_step():
    # The Note [Probes leave no trace] says the step is completed at the old lrs: the inner
    # optimizer has stepped, so the probe schedule and the records' step numbers move on too.
    model = gpt2(torch.float64)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=2)
    data = batches(3, seed=6)
    backward(model, opt, data[0])
    with pytest.raises(Boom):
        opt.step(_failing_closure(model, data[0], fail_on=2))
    train(model, opt, data[1:2])
    assert opt.history == []  # step 1 is not a probe step
    train(model, opt, data[2:])
    assert {r["step"] for r in opt.history} == {2}
    assert {int(s["step"]) for s in inner.state.values()} == {3}


class FlakySGD(torch.optim.SGD):
    """An inner optimizer that fails after it has written into the parameters."""

    def step(self, closure=None):
        super().step()
        raise RuntimeError("inner step failed")


def test_inner_optimizer_failing_on_a_probe_step_leaves_the_pre_step_weights():
    model = Quadratic()
    inner = FlakySGD(model.parameters(), lr=0.2)
    opt = GeNAdaPEFT(inner, closure=model, groups=model.groups(), lazy=1)
    opt.zero_grad()
    model().backward()
    w_t = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="inner step failed"):
        opt.step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w_t))
    assert [g["lr"] for g in opt.param_groups] == [0.2] * 3  # not left at the unit lr
    assert torch.equal(torch.get_rng_state(), rng)
    assert opt.history == [] and opt.lrs == dict.fromkeys("abc", 0.2)


def test_nan_probe_loss_rejects_only_that_group():
    model = gpt2(torch.float64)
    # Without the joint check: its line moves bias too, so the NaN would reject it here only.
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3), groups=group_parameters(model), lazy=1, joint_check=False
    )
    bias = group_parameters(model)["bias"]
    twin_accepted = 0
    for step, ids in enumerate(batches(3, seed=7)):
        backward(model, opt, ids)
        # A twin at the same point with the same optimizer state, probed with the true loss.
        twin = copy_with_grads(model, model)
        twin_opt = GeNAdaPEFT(
            torch.optim.AdamW(twin.parameters(), lr=1e-3), groups=group_parameters(twin), lazy=1, joint_check=False
        )
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        saved = [p.detach().clone() for p in bias]
        appi, lr = opt.appi["bias"], opt.lrs["bias"]

        def closure():
            # NaN exactly when the bias group is moved off w_t, i.e. during its own probes.
            if any(not torch.equal(p, s) for p, s in zip(bias, saved)):
                return torch.tensor(float("nan"), dtype=torch.float64)
            return lm_loss(model, ids)

        opt.step(closure)
        twin_opt.step(lambda: lm_loss(twin, ids))
        records = {r["group"]: r for r in opt.history if r["step"] == step}
        twin_records = {r["group"]: r for r in twin_opt.history if r["step"] == step}
        assert not records["bias"]["accepted"] and "non-finite" in records["bias"]["reason"]
        assert records["bias"]["ppi"] == 0.0
        assert opt.appi["bias"] == appi and opt.lrs["bias"] == lr
        twin_accepted += twin_records["bias"]["accepted"]
        for name in ("norm", "embed", "others"):
            assert same_records([records[name]], [twin_records[name]]), name
            assert opt.appi[name] == twin_opt.appi[name] and opt.lrs[name] == twin_opt.lrs[name]
        others = [p for n, ps in group_parameters(model).items() if n != "bias" for p in ps]
        twin_others = [p for n, ps in group_parameters(twin).items() if n != "bias" for p in ps]
        assert all(torch.equal(p, q) for p, q in zip(others, twin_others))
        assert all(torch.isfinite(p).all() for p in bias)
    assert twin_accepted  # the bias fits would have been accepted: the NaN is what rejected them


# ---------------------------------------------------------------------------------------
# checkpoints (§4.8) and schedulers (§4.2)


def _resume(checkpoint):
    model = gpt2(torch.float64, seed=123)
    model.load_state_dict(checkpoint["model"])
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05), groups=group_parameters(model), lazy=2
    )
    opt.load_state_dict(checkpoint["opt"])
    return model, opt


def test_state_dict_resume_is_bit_identical():
    model = gpt2(torch.float64)
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05), groups=group_parameters(model), lazy=2
    )
    data = batches(12, seed=8)
    train(model, opt, data[:6])
    assert any(r["accepted"] for r in opt.history)
    checkpoint = {"model": model.state_dict(), "opt": opt.state_dict()}
    logged = len(opt.history)  # the history is a log, not checkpoint state
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    buf.seek(0)
    resumed = [
        _resume(copy.deepcopy(checkpoint)),  # state_dict() holds live state tensors
        _resume(torch.load(buf)),
    ]
    for _, r_opt in resumed:
        assert r_opt.lrs == opt.lrs and r_opt.appi == opt.appi

    train(model, opt, data[6:])
    assert len(opt.history) == 6 * 4
    for r_model, r_opt in resumed:
        train(r_model, r_opt, data[6:])
        assert params_equal(model, r_model)
        assert r_opt.appi == opt.appi
        assert r_opt.lrs == opt.lrs
        assert same_records(r_opt.history, opt.history[logged:])
        for p, q in zip(model.parameters(), r_model.parameters()):
            s, t = opt.state[p], r_opt.state[q]
            assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)


def _quadratic_run(scheduled, steps):
    model = Quadratic(seed=2)
    inner = torch.optim.SGD(model.parameters(), lr=0.4)
    opt = GeNAdaPEFT(inner, closure=model, groups=model.groups(), lazy=1, max_interval=1)
    if scheduled:
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    lrs, etas = [], []
    for _ in range(steps):
        opt.zero_grad()
        model().backward()
        G = model.Q @ model.flat() - model.c
        etas.append(
            {name: float(G[sl] @ G[sl]) / float(G[sl] @ model.Q[sl, sl] @ G[sl]) for name, sl in model.blocks()}
        )
        opt.step()
        lrs.append(dict(opt.lrs))
    return opt, lrs, etas


def test_lambda_lr_halves_every_effective_lr():
    _, plain, _ = _quadratic_run(False, 1)
    opt, halved, etas = _quadratic_run(True, 3)
    assert all(r["accepted"] for r in opt.history)
    # Same start, same gradient: the first probe sees the same loss line in both runs.
    for name in plain[0]:
        assert halved[0][name] == pytest.approx(0.5 * plain[0][name], rel=1e-9), name
    # And along the scheduled run, §4.2: effective = newton_lr · (group lr / base lr), newton_lr
    # following the Newton rule of §4.6 towards η* = b / A.
    newton = dict.fromkeys(plain[0], 0.4)
    for lrs, eta in zip(halved, etas):
        for name in lrs:
            newton[name] = newton_update(newton[name], eta[name], 0.9, 2.0)
            assert lrs[name] == pytest.approx(0.5 * newton[name], rel=1e-9), name
    for g in opt.param_groups:  # the scheduler's value, untouched
        assert g["lr"] == 0.2 and g["adapeft_base_lr"] == 0.4


# ---------------------------------------------------------------------------------------
# masked mode basics (§7)


def test_mask_freezes_unselected_groups_and_probes_only_selected():
    model = gpt2(torch.float32, tie=False)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = GeNAdaPEFT(inner, groups=group_parameters(model), lazy=1)
    assert set(opt.names) == {"head", "norm", "bias", "embed", "others"}
    with pytest.raises(RuntimeError, match="at least one valued probe"):
        opt.select(0.5)
    data = batches(5, seed=9)
    train(model, opt, data[:2])
    with pytest.raises(ValueError, match="unknown group name"):
        opt.mask(["norm", "lm_head"])
    opt.mask(["norm", "head"])
    names = group_of(opt)
    frozen = [p for p in model.parameters() if names[p] not in ("norm", "head")]
    live = [p for p in model.parameters() if names[p] in ("norm", "head")]
    assert all(not p.requires_grad and p.grad is None and p not in inner.state for p in frozen)
    assert all(p.requires_grad for p in live)
    frozen_before = [p.detach().clone() for p in frozen]
    live_before = [p.detach().clone() for p in live]
    n0 = len(opt.history)
    train(model, opt, data[2:])
    assert all(torch.equal(p, q) for p, q in zip(frozen, frozen_before))
    assert all(p.grad is None and p not in inner.state for p in frozen)
    assert all(not torch.equal(p, q) for p, q in zip(live, live_before))
    assert [r["group"] for r in opt.history[n0:]] == ["head", "norm"] * 3


# ---------------------------------------------------------------------------------------
# bad input (§4.1, §4.5)


def _linear():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_overlapping_groups_raise():
    m = _linear()
    with pytest.raises(ValueError, match=r"parameter 0 of group 'b' .* also in group 'a'"):
        GeNAdaPEFT(_adamw(m), groups={"a": [m.weight, m.bias], "b": [m.weight]})
    with pytest.raises(ValueError, match="twice"):
        GeNAdaPEFT(_adamw(m), groups={"a": [m.weight, m.bias, m.weight]})


def test_group_missing_an_optimizer_parameter_raises():
    m = _linear()
    with pytest.raises(ValueError, match=r"shape \(2,\)\) is in no group \(1 such\); add it to a group"):
        GeNAdaPEFT(_adamw(m), groups={"w": [m.weight]})
    # The common peft mistake: AdamW(model.parameters()) with the frozen base, default grouping.
    m.bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"it is frozen: build the optimizer from the trainable parameters"):
        GeNAdaPEFT(_adamw(m), groups={"w": [m.weight]})
    assert m.weight.requires_grad and m.bias.grad is None


def test_grouped_parameter_not_in_the_optimizer_raises():
    m = _linear()
    stray = nn.Parameter(torch.zeros(5))
    with pytest.raises(ValueError, match=r"group 'x' \(shape \(5,\)\) is not in the optimizer"):
        GeNAdaPEFT(_adamw(m), groups={"w": [m.weight, m.bias], "x": [stray]})


def test_empty_group_and_bad_group_types_raise():
    m = _linear()
    with pytest.raises(ValueError, match="group 'e' is empty"):
        GeNAdaPEFT(_adamw(m), groups={"w": [m.weight, m.bias], "e": []})
    with pytest.raises(TypeError, match="groups must map a name"):
        GeNAdaPEFT(_adamw(m), groups=[m.weight, m.bias])


@pytest.mark.parametrize("lazy", [-1, 1.5, "8", True])
def test_bad_lazy_raises(lazy):
    with pytest.raises(ValueError, match="Invalid lazy"):
        GeNAdaPEFT(_adamw(_linear()), lazy=lazy)


@pytest.mark.parametrize(
    "scales, match",
    [
        ((1, 1), "distinct scales"),
        ((), "distinct scales"),
        ((0, 1), "finite and non-zero"),
        ((float("nan"), 1), "finite and non-zero"),
        ((float("inf"), 1), "finite and non-zero"),
        (("a", 1), "sequence of numbers"),
        (3, "sequence of numbers"),
    ],
)
def test_degenerate_scales_raise(scales, match):
    with pytest.raises(ValueError, match=match):
        GeNAdaPEFT(_adamw(_linear()), scales=scales)


@pytest.mark.parametrize("slope", ["auto", "stencil"])
def test_one_scale_needs_a_backward_slope(slope):
    with pytest.raises(ValueError, match="one scale needs slope='backward'"):
        GeNAdaPEFT(_adamw(_linear()), scales=(1,), slope=slope)
    GeNAdaPEFT(_adamw(_linear()), scales=(1,), slope="backward")  # b known: one point fits A


def test_unknown_slope_raises():
    with pytest.raises(ValueError, match="Invalid slope: 'forward'; use one of 'auto', 'backward', 'stencil'"):
        GeNAdaPEFT(_adamw(_linear()), slope="forward")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r2_min": -0.1}, "Invalid r2_min: -0.1"),
        ({"r2_min": 1.5}, "Invalid r2_min: 1.5"),
        ({"r2_min": float("nan")}, "Invalid r2_min: nan"),
        ({"smoothing": 1.0}, r"Invalid smoothing: 1.0; use a value in \[0, 1\)"),
        ({"smoothing": -0.5}, "Invalid smoothing: -0.5"),
        ({"max_change": 0.5}, "Invalid max_change: 0.5"),
        ({"max_change": float("inf")}, "Invalid max_change: inf"),
        ({"max_change": float("nan")}, "Invalid max_change: nan"),
    ],
)
def test_out_of_range_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeNAdaPEFT(_adamw(_linear()), **kwargs)


def test_non_callable_closure_raises():
    m = _linear()
    with pytest.raises(TypeError, match="closure must be callable"):
        GeNAdaPEFT(_adamw(m), closure=1.0)
    opt = GeNAdaPEFT(_adamw(m), lazy=1)
    with pytest.raises(TypeError, match="closure must be callable"):
        opt.step("loss")


def _probe_ready():
    m = _linear()
    x = torch.randn(4, 3)
    opt = GeNAdaPEFT(_adamw(m), lazy=1)
    opt.zero_grad()
    m(x).pow(2).mean().backward()
    return m, x, opt


def test_closure_returning_a_non_scalar_raises_type_error():
    m, x, opt = _probe_ready()
    with pytest.raises(TypeError, match=r"tensor of shape \(4, 2\).*scalar loss"):
        opt.step(lambda: m(x).pow(2))
    with pytest.raises(TypeError, match="returned str"):
        opt.step(lambda: "0.5")


def test_closure_calling_backward_raises():
    m, x, opt = _probe_ready()

    def plain():
        loss = m(x).pow(2).mean()
        loss.backward()
        return loss

    def with_grad():
        with torch.enable_grad():
            loss = m(x).pow(2).mean()
            loss.backward()
        return loss

    for closure, match in ((plain, "called backward"), (with_grad, r"called backward\(\)\?")):
        grads = [p.grad.clone() for p in m.parameters()]
        with pytest.raises(RuntimeError, match=match):
            opt.step(closure)
        # the training gradients are as they were: the closure's backward went elsewhere
        assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads))


def test_probe_step_without_closure_raises():
    _, _, opt = _probe_ready()
    with pytest.raises(RuntimeError, match="no closure is available.*probe_data="):
        opt.step()


def test_wrapping_twice_and_non_optimizers_raise():
    m = _linear()
    inner = _adamw(m)
    opt = GeNAdaPEFT(inner)
    with pytest.raises(TypeError, match="already a GeNAdaPEFT"):
        GeNAdaPEFT(opt)
    with pytest.raises(ValueError, match="wrapped before"):
        GeNAdaPEFT(inner)
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer.*got list"):
        GeNAdaPEFT(list(m.parameters()))


# ---------------------------------------------------------------------------------------
# slopes from a backward pass (Note [Slopes from a backward pass])


class Checkpointed(nn.Module):
    """Three linear layers, the middle one under activation checkpointing (reentrant or not)."""

    def __init__(self, reentrant):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.m, self.b, self.reentrant = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 1), reentrant
        self.x, self.y = torch.randn(16, 4), torch.randn(16, 1)

    def forward(self):
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(lambda h: torch.tanh(self.m(h)), torch.tanh(self.a(self.x)), use_reentrant=self.reentrant)
        return F.mse_loss(self.b(h), self.y)


def _run(model, steps=3, **kwargs):
    opt = GeNAdaPEFT(torch.optim.SGD(model.parameters(), lr=0.1), closure=model, lazy=1, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        model().backward()
        opt.step()
    return opt


def test_auto_falls_back_to_the_stencil_where_checkpointing_refuses_autograd_grad():
    with pytest.warns(RuntimeWarning, match="probing with the stencil from now on"):
        opt = _run(Checkpointed(reentrant=True))
    assert opt.slope == "stencil" and len(opt.history) == 3 and opt.history[-1]["accepted"]
    with pytest.raises(RuntimeError, match="use_reentrant"):
        _run(Checkpointed(reentrant=True), slope="backward")
    plain = _run(Checkpointed(reentrant=False))  # non-reentrant checkpointing takes the backward
    assert plain.slope == "auto" and plain.history[-1]["accepted"]


def test_a_backward_slope_leaves_every_grad_as_the_training_step_left_it():
    model = Quadratic()
    outside = nn.Parameter(torch.ones(2, dtype=torch.float64))  # a parameter the optimizer does not hold
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.2),
        closure=lambda: model() + (outside**2).sum(),
        groups=model.groups(),
        lazy=1,
    )
    opt.zero_grad()
    model().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert outside.grad is None  # autograd.grad accumulates into no .grad
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert opt.history[0]["b"] == pytest.approx(float(grads[0] @ grads[0]), rel=1e-12)  # SGD: d = G


def test_backward_slope_fits_a_cubic_line_with_the_exact_curvature():
    """L(w) = Σ w³/3 + ½‖w‖²: along d the odd cubic term cancels on the symmetric pair, so A is
    the exact dᵀHd = Σ (2w + 1) d² and b the exact Gᵀd = Σ (w² + w) d, at the wide points."""
    w = nn.Parameter(torch.tensor([0.5, -0.3, 0.8], dtype=torch.float64))

    def loss():
        return (w**3 / 3).sum() + 0.5 * (w**2).sum()

    opt = GeNAdaPEFT(torch.optim.SGD([w], lr=0.3), closure=loss, lazy=1, joint_check=False, r2_min=0.0)
    opt.zero_grad()
    loss().backward()
    d = w.grad.clone()
    w0 = w.detach().clone()
    opt.step()
    r = opt.history[0]
    assert r["b"] == pytest.approx(float((w0**2 + w0) @ d), rel=1e-12)
    assert r["A"] == pytest.approx(float((2 * w0 + 1) @ (d * d)), rel=1e-10)
    assert r["r2"] < 1.0  # the cubic shows in the residual that the known slope leaves
