"""The wrapper's contract with its inner optimizer and with checkpoints: optimizers it cannot
wrap are refused at construction, named param groups split with their names, and a refused
load or an interrupted probe leaves everything as it was."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from adapeft_optim import GeNAdaPEFT


def model_and_groups(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    groups = {"first": list(model[0].parameters()), "last": list(model[2].parameters())}
    return model, groups


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)


def loss_of(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda ps: torch.optim.LBFGS(ps), TypeError, "LBFGS cannot be wrapped: it runs a line search"),
        (lambda ps: torch.optim.ASGD(ps), TypeError, "ASGD cannot be wrapped"),
        (lambda ps: torch.optim.Rprop(ps), TypeError, "Rprop cannot be wrapped"),
        (lambda ps: torch.optim.Adagrad(ps, lr_decay=0.1), TypeError, "Adagrad cannot be wrapped: lr_decay"),
        (lambda ps: torch.optim.AdamW(ps, maximize=True), ValueError, r"maximize=True\) is not supported"),
    ],
)
def test_inner_optimizers_whose_step_is_not_linear_in_lr_are_refused_at_construction(make, error, match):
    model, groups = model_and_groups()
    with pytest.raises(error, match=match):
        GeNAdaPEFT(make(model.parameters()), groups=groups)


def test_adagrad_without_lr_decay_and_sgd_are_accepted():
    for make in (lambda ps: torch.optim.Adagrad(ps), lambda ps: torch.optim.SGD(ps, lr=0.1)):
        model, groups = model_and_groups()
        GeNAdaPEFT(make(model.parameters()), groups=groups)


def test_a_scheduler_built_before_wrapping_is_refused_with_the_fix():
    model, groups = model_and_groups()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1.0)
    with pytest.raises(RuntimeError, match="scheduler was built on this optimizer before wrapping"):
        GeNAdaPEFT(inner, groups=groups)


def test_param_names_follow_their_parameters_into_the_split_groups():
    model, groups = model_and_groups()
    inner = torch.optim.AdamW(model.named_parameters(), lr=1e-3)
    opt = GeNAdaPEFT(inner, groups=groups)
    names = {p: n for n, p in model.named_parameters()}
    assert [g["param_names"] for g in opt.param_groups] == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    for g in opt.param_groups:
        assert g["param_names"] == [names[p] for p in g["params"]]


def _trained(steps=5):
    model, groups = model_and_groups()
    batches = [data(seed) for seed in range(steps + 3)]
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        closure=lambda b: loss_of(model, b),
        probe_data=batches[steps:],
        groups=groups,
        lazy=2,
    )
    for batch in batches[:steps]:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    return model, opt


def _snapshot(opt):
    sd = opt.state_dict()
    return copy.deepcopy(sd), [dict(g) for g in opt.param_groups]


def _same(a, b):
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _corrupt(sd, path, value):
    node = sd
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return sd


@pytest.mark.parametrize(
    "path, value, match",
    [
        (
            ("param_groups", 0, "adapeft_factor"),
            math.nan,
            r"\[0\]\['adapeft_factor'\] = nan: must be a finite number > 0",
        ),
        (("param_groups", 1, "adapeft_factor"), -1.0, r"\[1\]\['adapeft_factor'\] = -1.0"),
        (("param_groups", 0, "adapeft_factor"), "2", r"\['adapeft_factor'\] = '2'"),
        (("param_groups", 0, "adapeft_appi"), math.inf, r"\['adapeft_appi'\] = inf"),
        (("param_groups", 1, "adapeft_spacing"), 0.5, r"\['adapeft_spacing'\] = 0.5: must be a finite number >= 1"),
        (("param_groups", 0, "adapeft_step"), -3, r"\['adapeft_step'\] must be an int >= 0"),
        (("param_groups", 1, "adapeft_mask"), ["nope"], r"\['adapeft_mask'\] = \['nope'\] names unknown groups"),
        (("param_groups", 0, "adapeft_recent_l0"), KeyError, r"lacks \['adapeft_recent_l0'\]"),
        (("param_groups", 0, "adapeft_name"), "other", r"is for groups \['other', 'last'\]"),
        (("param_groups",), KeyError, "no list of param_groups"),
        (("param_groups", 0, "params"), [0, 1, 2], "doesn't match the size|does not match"),
    ],
)
def test_a_refused_load_leaves_the_optimizer_exactly_as_it_was(path, value, match):
    model, opt = _trained()
    good = opt.state_dict()
    before, groups_before = _snapshot(opt)
    bad = _corrupt(copy.deepcopy(good), path, value)
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(bad)
    after, groups_after = _snapshot(opt)
    assert _same(before, after) and _same(groups_before, groups_after)
    # and it still resumes from a good checkpoint, bit for bit like a twin that never saw the bad one
    twin_model, twin = copy.deepcopy((model, opt))
    twin.closure = lambda b: loss_of(twin_model, b)
    opt.load_state_dict(good)
    for m, o in ((model, opt), (twin_model, twin)):
        for seed in (20, 21, 22):
            o.zero_grad()
            loss_of(m, data(seed)).backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin_model.parameters()))


def test_keyboard_interrupt_in_a_probe_applies_no_part_of_its_fit():
    model, opt = _trained(steps=4)  # the next step, 4, probes
    stats, history = copy.deepcopy(opt._stats), list(opt.history)
    twin_model = copy.deepcopy(model)
    twin = torch.optim.AdamW([{"params": list(twin_model[i].parameters())} for i in (0, 2)], lr=1.0)
    inner = copy.deepcopy(opt.optimizer.state_dict())  # its tensors are the live moments
    twin.load_state_dict(
        {**inner, "param_groups": [{**g, "lr": opt.lrs[g["adapeft_name"]]} for g in inner["param_groups"]]}
    )
    calls = []

    def closure(batch):
        calls.append(1)
        if len(calls) == 3:  # the second group's point (after L0 with the slopes, the first group's)
            raise KeyboardInterrupt
        return loss_of(model, batch)

    batch = data(30)
    for m, o in ((model, opt), (twin_model, twin)):
        o.zero_grad()
        loss_of(m, batch).backward()
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    twin.step()  # what the step does at the old lrs
    assert opt._stats == stats and opt.history == history
    for p, q in zip(model.parameters(), twin_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_distributed_checkpoint_state_dict_round_trips_and_a_fresh_optimizer_is_not_stepped():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model, opt = _trained(steps=5)
    sd = get_optimizer_state_dict(model, opt)  # the path of FSDP2 and torchtitan checkpoints
    assert sd["param_groups"][0]["adapeft_step"] == 5

    fresh_model, _ = model_and_groups(seed=9)
    calls = []
    fresh = GeNAdaPEFT(
        torch.optim.AdamW(fresh_model.parameters(), lr=1e-2),
        closure=lambda b: calls.append(1) or loss_of(fresh_model, b),
        probe_data=[data(s) for s in range(5, 8)],
        groups={"first": list(fresh_model[0].parameters()), "last": list(fresh_model[2].parameters())},
        lazy=2,
    )
    start = [p.detach().clone() for p in fresh_model.parameters()]
    get_optimizer_state_dict(fresh_model, fresh)  # initialises the inner state with an lr-0 step
    assert not calls and fresh._step == 0 and not fresh.history
    assert all(torch.equal(p, q) for p, q in zip(fresh_model.parameters(), start))

    fresh_model.load_state_dict(model.state_dict())
    set_optimizer_state_dict(fresh_model, fresh, copy.deepcopy(sd))  # as if saved and loaded: no shared moments
    assert fresh.lrs == opt.lrs and fresh.appi == opt.appi and fresh._step == opt._step
    for m, o in ((model, opt), (fresh_model, fresh)):
        for seed in (20, 21, 22):
            o.zero_grad()
            loss_of(m, data(seed)).backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh_model.parameters()))
    assert fresh.lrs == opt.lrs and fresh.appi == opt.appi


def test_checkpoint_size_does_not_grow_with_steps_and_history_is_bounded():
    import io

    model, groups = model_and_groups()
    batches = [data(seed) for seed in range(4)]
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=1e-3),
        closure=lambda b: loss_of(model, b),
        probe_data=batches,
        groups=groups,
        lazy=1,
        history_size=50,
    )
    sizes = []
    for step in range(120):
        opt.zero_grad()
        loss_of(model, batches[step % 4]).backward()
        opt.step()
        if step in (20, 119):
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            sizes.append(len(buf.getvalue()))
    assert sizes[1] <= sizes[0] + 64  # a few digits more in the counters, no per-step growth
    assert len(opt.history) == 50 and opt.history[-1]["step"] == 119


def test_state_dict_hooks_registered_on_the_wrapper_run():
    model, opt = _trained()
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("save pre"))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append("save post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load post"))
    opt.load_state_dict(opt.state_dict())
    assert seen == ["save pre", "save post", "load pre", "load post"]


class Normed(nn.Module):
    """BatchNorm, old-style spectral_norm and the parametrization's spectral_norm: every buffer
    a training forward changes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.utils.spectral_norm(nn.Linear(4, 8))
        self.bn = nn.BatchNorm1d(8)
        self.b = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 1))

    def forward(self, x):
        return self.b(torch.tanh(self.bn(self.a(x))))


def test_probe_forwards_leave_every_buffer_as_the_training_forward_left_it():
    model = Normed().train()
    twin = copy.deepcopy(model)
    params = lambda m: [p for p in m.parameters()]  # noqa: E731
    opt = GeNAdaPEFT(
        torch.optim.SGD(params(model), lr=0.05),
        closure=lambda b: loss_of(model, b),
        probe_data=[data(s) for s in range(10, 13)],
        groups={"all": params(model)},
        lazy=1,
        adapt_lr=False,
    )  # influence only: the trajectory is the bare SGD's, bit for bit
    bare = torch.optim.SGD(params(twin), lr=0.05)
    for seed in range(4):
        for m, o in ((model, opt), (twin, bare)):
            o.zero_grad()
            loss_of(m, data(seed)).backward()
            o.step()
        for (name, b1), (_, b2) in zip(model.named_buffers(), twin.named_buffers()):
            assert torch.equal(b1, b2), name
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    assert int(model.bn.num_batches_tracked) == 4  # the training forwards only
    assert len(opt.history) == 4


def test_dtensor_parameters_probe_like_plain_ones(tmp_path):
    """Note [Sharded parameters]: the moves and restores run tensor by tensor on DTensors; on one
    rank a DTensor run equals the plain run bit for bit (tests/test_fsdp.py: two ranks)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(0)
    w0, x, y = torch.randn(4, 4, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        runs = []
        for weight in (nn.Parameter(w0.clone()), nn.Parameter(distribute_tensor(w0.clone(), mesh, [Shard(0)]))):

            def loss(weight=weight):
                full = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
                return (full @ x - y).square().mean()

            # "auto" picks the stencil for the DTensor run (no backward across ranks): both use it.
            opt = GeNAdaPEFT(
                torch.optim.AdamW([weight], lr=1e-2), closure=loss, groups={"w": [weight]}, lazy=1, slope="stencil"
            )
            for _ in range(4):
                loss().backward()
                opt.step()
                opt.zero_grad()
            full = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
            runs.append((full.detach().clone(), opt.lrs, [r["b"] for r in opt.history]))
        assert type(weight).__name__ == "DTensor"  # an nn.Parameter of a DTensor is a DTensor
        assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]
        assert runs[0][1]["w"] != 1e-2  # the probes adapted the lr
    finally:
        dist.destroy_process_group()


def test_parameters_replaced_after_wrapping_are_refused_before_anything_moves():
    """DeepSpeed ZeRO-1/2 wrap the optimizer after it is built and swap its parameters for flat
    partitions: the first step() refuses, before the inner optimizer or a parameter moves."""
    model = nn.Linear(4, 2)
    opt = GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-3), closure=lambda: model(torch.ones(1, 4)).sum())
    model(torch.ones(1, 4)).sum().backward()
    flat = nn.Parameter(torch.cat([p.detach().flatten() for p in model.parameters()]))
    flat.grad = torch.ones_like(flat)
    opt.param_groups[0]["params"] = [flat]  # what ZeRO-1/2's flattening does to a param group
    before = flat.detach().clone()
    with pytest.raises(RuntimeError, match="replaced after wrapping.*DeepSpeed ZeRO-1/2"):
        opt.step()
    assert torch.equal(flat, before) and not opt.optimizer.state


def test_deepspeed_zero3_parameters_are_refused_at_construction():
    weight = nn.Parameter(torch.randn(4, 4))
    weight.ds_id = 0  # what DeepSpeed ZeRO-3 marks its partitioned parameters with
    with pytest.raises(NotImplementedError, match="DeepSpeed ZeRO-3 .* Use FSDP2"):
        GeNAdaPEFT(torch.optim.AdamW([weight], lr=1e-3), groups={"w": [weight]})


def test_step_hooks_fire_once_per_step():
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model, opt = _trained(steps=1)  # the next step does not probe, the one after does
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", type(o).__name__))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", type(o).__name__))),
        opt.register_step_pre_hook(lambda o, a, k: calls.append(("wrapper pre", type(o).__name__))),
        opt.optimizer.register_step_post_hook(lambda o, a, k: calls.append(("inner post", type(o).__name__))),
    ]
    try:
        for seed in (40, 41):  # a plain step, then a probe step
            calls.clear()
            opt.zero_grad()
            loss_of(model, data(seed)).backward()
            opt.step()
            assert sorted(calls) == [
                ("global post", "GeNAdaPEFT"),
                ("global pre", "GeNAdaPEFT"),
                ("inner post", "AdamW"),
                ("wrapper pre", "GeNAdaPEFT"),
            ]
    finally:
        for h in handles:
            h.remove()
    assert opt._step == 3 and len({r["step"] for r in opt.history}) == 2


@pytest.mark.parametrize(
    "inner_kwargs", [{"foreach": False}, {"foreach": True}, {"fused": True}], ids=["for-loop", "foreach", "fused"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_only_checkpoint_resumes_bit_identically_for_every_adamw_implementation(inner_kwargs, dtype):
    import io

    def build(seed):
        model, _ = model_and_groups(seed)
        model = model.to(dtype)
        opt = GeNAdaPEFT(
            torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, **inner_kwargs),
            closure=lambda b: loss_of(model, (b[0].to(dtype), b[1].to(dtype))),
            probe_data=[data(s) for s in range(50, 53)],
            groups={"first": list(model[0].parameters()), "last": list(model[2].parameters())},
            lazy=2,
        )
        return model, opt

    def train(model, opt, seeds):
        for seed in seeds:
            x, y = data(seed)
            opt.zero_grad()
            loss_of(model, (x.to(dtype), y.to(dtype))).backward()
            opt.step()

    model, opt = build(0)
    train(model, opt, range(5))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    checkpoint = torch.load(buf, weights_only=True)  # plain containers and tensors only
    resumed_model, resumed = build(7)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["opt"])
    train(model, opt, range(5, 10))
    train(resumed_model, resumed, range(5, 10))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed_model.parameters()))
    assert resumed.lrs == opt.lrs and resumed.appi == opt.appi
    assert any(r["accepted"] for r in opt.history)


def test_a_step_without_gradients_is_the_inner_optimizers_no_op():
    model, groups = model_and_groups()
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        closure=lambda b: loss_of(model, b),
        probe_data=[data(0)],
        groups=groups,
        lazy=1,
    )
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no backward: AdamW skips parameters without .grad, and so does the probe
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.history and not opt.state
