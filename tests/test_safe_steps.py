"""Learning rates that help and never hurt: probes on unseen batches, the joint-step check, the
lr ceiling, the divergence guard and the influence-only mode, each against a closed form or the
bare inner optimizer."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from adapeft_optim import GeNAdaPEFT
from adapeft_optim import update as update_module


class Mean(nn.Module):
    """L_batch(w) = ½‖w − c‖² averaged over the rows c of a batch: gradient w − mean(c), H = I."""

    def __init__(self, n=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))

    def forward(self, batch):
        return 0.5 * ((self.w - batch) ** 2).sum(dim=1).mean()


def row_batches(count, n=6, rows=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [3.0 * torch.randn(rows, n, generator=g, dtype=torch.float64) for _ in range(count)]


def test_probe_batch_gives_the_unbiased_slope_where_the_same_batch_is_biased():
    model = Mean()
    train, probe = row_batches(3, seed=1), row_batches(2, seed=2)
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.1),
        closure=model,
        probe_data=probe,
        groups={"w": [model.w]},
        lazy=1,
        joint_check=False,
        max_interval=1,  # A measured at every probe (not reused): exactly ‖d‖² each time
    )
    same_batch, fresh = [], []
    for step, batch in enumerate(train):
        opt.zero_grad()
        model(batch).backward()
        w = model.w.detach().clone()
        d = w - batch.mean(0)  # SGD's direction per unit lr: the training batch's gradient
        seen = probe[step % len(probe)]  # one batch per probe, started over when it ends
        n0 = len(opt.history)
        opt.step()
        record = opt.history[n0]
        # On the probe batch: b = (w − mean c_probe)ᵀd, A = ‖d‖² (H = I), exactly.
        assert record["b"] == pytest.approx(float((w - seen.mean(0)) @ d), rel=1e-9)
        assert record["A"] == pytest.approx(float(d @ d), rel=1e-9)
        same_batch.append(float(d @ d))  # what the training batch's own loss would give
        fresh.append(record["b"])
    # The same-batch slope ‖d‖² exceeds the unseen-batch slope: d fits the batch's own noise.
    assert all(s > f for s, f in zip(same_batch, fresh))


def test_all_forwards_of_a_probe_evaluate_one_batch_and_batches_cycle():
    model = Mean()
    probe = row_batches(3, seed=4)
    seen = []

    def closure(batch):
        seen.append(batch)
        return model(batch)

    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.1),
        closure=closure,
        probe_data=probe,
        groups={"w": [model.w]},
        lazy=2,
        max_interval=1,
    )
    per_probe = 1 + 2 + 1  # L0 with the slope, the group's 2 points, the joint point
    for batch in row_batches(10, seed=5):
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    assert len(seen) == 5 * per_probe
    for k in range(5):
        used = seen[k * per_probe : (k + 1) * per_probe]
        assert all(b is probe[k % 3] for b in used)


def test_probe_data_errors_name_the_fix():
    model = Mean()
    groups = {"w": [model.w]}
    sgd = lambda: torch.optim.SGD(model.parameters(), lr=0.1)  # noqa: E731
    with pytest.raises(TypeError, match="closure takes the probe batch"):
        GeNAdaPEFT(sgd(), closure=lambda: model(row_batches(1)[0]), probe_data=row_batches(2), groups=groups)
    with pytest.raises(TypeError, match="iterable of batches"):
        GeNAdaPEFT(sgd(), closure=model, probe_data=row_batches(1)[0], groups=groups)
    opt = GeNAdaPEFT(sgd(), closure=model, probe_data=(b for b in row_batches(1)), groups=groups, lazy=1)
    before = model.w.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model(row_batches(1, seed=9)[0]).backward()
        if _ == 0:
            opt.step()  # the generator's one batch
    with pytest.raises(RuntimeError, match="probe_data yielded no batch.*itertools.cycle"):
        opt.step()
    assert not torch.equal(model.w, before)  # the first step happened; the refused one did not move w
    moved = model.w.detach().clone()
    with pytest.raises(RuntimeError):
        opt.step()
    assert torch.equal(model.w, moved)


class Coupled(nn.Module):
    """L(w) = ½ wᵀQw − cᵀw over three groups whose blocks of Q are coupled (float64)."""

    def __init__(self, coupling, sizes=(3, 4, 5), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = sum(sizes)
        M = torch.randn(n, n, generator=g, dtype=torch.float64)
        Q = M @ M.T / n + 0.5 * torch.eye(n, dtype=torch.float64)
        ones = torch.ones(n, n, dtype=torch.float64)
        Q = Q + coupling * ones  # every group's direction feels the others'
        mask = torch.block_diag(*[torch.ones(s, s, dtype=torch.float64) for s in sizes])
        self.register_buffer("Q", Q if coupling else Q * mask)
        self.register_buffer("c", torch.randn(n, generator=g, dtype=torch.float64))
        # Weights around +2: the gradient's entries share a sign, so the coupling adds up.
        self.ws = nn.ParameterList(
            [nn.Parameter(2.0 + torch.randn(s, generator=g, dtype=torch.float64)) for s in sizes]
        )
        self.sizes = sizes

    def groups(self):
        return {name: [p] for name, p in zip("abc", self.ws)}

    def blocks(self):
        bounds = list(itertools.accumulate(self.sizes, initial=0))
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def forward(self):
        w = torch.cat(list(self.ws))
        return 0.5 * w @ self.Q @ w - self.c @ w


def _newton_then_joint(model, lr=0.2):
    """One probe step with per-group Newton lrs taken in full (smoothing 0, no clamp), and the
    closed-form expectation: η_k = b_k/A_k, then the joint line's t* = GᵀD / DᵀQD, D = Σ η_k G_k."""
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=lr),
        closure=model,
        groups=model.groups(),
        lazy=1,
        smoothing=0.0,
        max_change=1e6,
        max_lr_factor=1e6,
    )
    opt.zero_grad()
    model().backward()
    w = torch.cat([p.detach() for p in model.ws])
    G = model.Q @ w - model.c
    etas = [float(G[s] @ G[s]) / float(G[s] @ model.Q[s, s] @ G[s]) for s in model.blocks()]
    D = torch.cat([eta * G[s] for eta, s in zip(etas, model.blocks())])
    t_star = float(G @ D) / float(D @ model.Q @ D)
    opt.step()
    return opt, w, G, etas, t_star


def test_joint_check_scales_coupled_groups_by_the_joint_newton_point():
    model = Coupled(coupling=1.0)
    opt, w, G, etas, t_star = _newton_then_joint(model)
    assert t_star < 0.5  # coupled groups: the per-group optima together overshoot
    for name, eta in zip("abc", etas):
        assert opt.lrs[name] == pytest.approx(eta * t_star, rel=1e-8)
    record = opt.history[-1]
    assert record["joint_t"] == pytest.approx(t_star, rel=1e-8) and record["joint_scale"] == pytest.approx(t_star)
    expected = torch.cat([w[s] - eta * t_star * G[s] for eta, s in zip(etas, model.blocks())])
    torch.testing.assert_close(torch.cat([p.detach() for p in model.ws]), expected, rtol=0, atol=1e-12)


def test_joint_check_leaves_uncoupled_groups_at_their_own_newton_lrs():
    model = Coupled(coupling=0.0)
    opt, _, _, etas, t_star = _newton_then_joint(model)
    assert t_star == pytest.approx(1.0, rel=1e-12)  # block-diagonal H: Σ η_k b_k / Σ η_k² A_k = 1
    for name, eta in zip("abc", etas):
        assert opt.lrs[name] == pytest.approx(eta, rel=1e-9)


def _soak(steps, *, ceiling, guard, monkeypatch):
    """SGD on a coupled quadratic with per-group Newton lrs and no joint check: the groups' own
    optima add up to a step past the stability limit, and the lrs keep asking for more."""
    model = Coupled(coupling=1.0, seed=3)
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.01),
        closure=model,
        groups=model.groups(),
        lazy=1,
        joint_check=False,
        max_lr_factor=10.0 if ceiling else 1e300,
        max_interval=1,  # every group at every probe step: one guard record per group per warning
    )
    losses = []
    with monkeypatch.context() as m, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not guard:
            m.setattr(update_module, "_GUARD_SD", math.inf)
        for _ in range(steps):
            opt.zero_grad()
            loss = model()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            opt.step()
    return opt, losses, [w for w in caught if "GeNAdaPEFT step" in str(w.message)]


def test_without_ceiling_and_guard_the_soak_diverges(monkeypatch):
    _, losses, _ = _soak(1000, ceiling=False, guard=False, monkeypatch=monkeypatch)
    assert not math.isfinite(losses[-1])


@pytest.mark.parametrize("ceiling, guard", [(True, False), (False, True), (True, True)])
def test_ceiling_or_guard_keeps_the_soak_finite(monkeypatch, ceiling, guard):
    opt, losses, warned = _soak(1000, ceiling=ceiling, guard=guard, monkeypatch=monkeypatch)
    assert len(losses) == 1000 and all(math.isfinite(v) for v in losses)
    minimum = float(-0.5 * opt.closure.c @ torch.linalg.solve(opt.closure.Q, opt.closure.c))
    assert losses[-1] == pytest.approx(minimum, rel=1e-6)  # and it still converges
    if ceiling:
        assert all(opt.newton_lrs[n] / 0.01 <= 10.0 * (1 + 1e-12) for n in "abc")
    if guard and not ceiling:  # the lrs overshoot, and the guard pulls them back, saying so
        assert warned and all("jumped above the median" in str(w.message) for w in warned)
        assert sum(r["guard"] for r in opt.history) == 3 * len(warned)


def test_non_finite_probe_loss_shrinks_lrs_instead_of_freezing_them():
    model = Mean()
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.1),
        closure=lambda b: model(b) * math.inf,
        probe_data=row_batches(1),
        groups={"w": [model.w]},
        lazy=1,
    )
    for k in range(3):
        opt.zero_grad()
        model(row_batches(1, seed=k)[0]).backward()
        with pytest.warns(RuntimeWarning, match="probe loss is inf.*dividing the lr"):
            opt.step()
        assert opt.lrs["w"] == pytest.approx(0.1 / 2.0 ** (k + 1))
        assert not opt.history[-1]["accepted"]


def test_influence_only_is_bit_identical_to_the_bare_optimizer_and_accumulates_appi():
    model = Coupled(coupling=0.5)
    twin = Coupled(coupling=0.5)
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5),
        closure=model,
        groups=model.groups(),
        lazy=2,
        adapt_lr=False,
        max_interval=1,  # one PPI per probe step: the closed form below
    )
    bare = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.5)
    expected_appi = dict.fromkeys("abc", 0.0)
    buf = None
    for step in range(12):
        for m, o in ((model, opt), (twin, bare)):
            o.zero_grad()
            m().backward()
        w = torch.cat([p.detach() for p in model.ws])
        G = model.Q @ w - model.c
        buf = G.clone() if buf is None else 0.5 * buf + G  # SGD's direction per unit lr
        if step % 2 == 0:
            for name, s in zip("abc", model.blocks()):
                b, A = float(G[s] @ buf[s]), float(buf[s] @ model.Q[s, s] @ buf[s])
                expected_appi[name] += b * b / (A * (s.stop - s.start)) if b > 0 else 0.0
        opt.step()
        bare.step()
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
        assert opt.lrs == dict.fromkeys("abc", 0.05)
    assert all(r["accepted"] or r["reason"] == "non-positive slope" for r in opt.history)
    for name in "abc":
        assert expected_appi[name] > 0
        assert opt.appi[name] == pytest.approx(expected_appi[name], rel=1e-6)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_keep_the_wrapper_and_continue_identically(how):
    import copy
    import pickle

    model = Mean()
    probe = row_batches(3, seed=6)
    train = row_batches(8, seed=7)
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        closure=model,
        probe_data=probe,
        groups={"w": [model.w]},
        lazy=2,
    )
    for batch in train[:3]:
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    # Together with the model, so the optimizer's parameters map to the copy's.
    if how == "deepcopy":
        twin_model, twin = copy.deepcopy((model, opt))
    else:
        twin_model, twin = pickle.loads(pickle.dumps((model, opt)))
    assert twin.closure is twin_model
    unpickled = pickle.loads(pickle.dumps(opt.state_dict()))
    assert unpickled["param_groups"][0]["adapeft_probe_count"] == opt._probe_count == 2
    for batch in train[3:]:
        for m, o in ((model, opt), (twin_model, twin)):
            o.zero_grad()
            m(batch).backward()
            o.step()
    assert torch.equal(model.w, twin_model.w)
    assert opt.appi == twin.appi and opt.lrs == twin.lrs
