"""Where a probe step's time goes, and the probe designs measured and not taken (issue #14).

    pytest benchmarks/test_bench_probe_parts.py --benchmark-only

Every figure is in units of one no-grad forward F of the benchmark model (4x128 GPT-2 + LoRA,
8 rows of 64 tokens), timed in the same run:

- ``parts``: one probe step of the default (backward slope), every group measured, split into
  the inner step, the slope pass (forward + backward on the probe batch), the curvature
  forwards and the joint check; and what they put under the amortized ratio to AdamW at
  ``lazy=8``: ``1 + fixed / (8 · step)`` with no curvature measured (``fixed``: the probe
  step's extra time but its curvature forwards), plus ``per_measured_group`` for each group
  whose curvature a probe measures; ``groups_for_1.5`` is how many that leaves at 1.5×.
- ``vmap-pair``: a group's two curvature points in one ``torch.func.vmap`` call over stacked
  copies of the group's parameters, against two forwards.
- ``forward-mode``: the exact second directional derivative of the loss along a group's
  direction by forward-over-forward ``torch.func.jvp``, against the two forwards of the pair.
- ``one-point``: the curvature from one point (scale 2, the slope known) instead of the pair
  (-2, 2), against the exact ``dᵀHd`` by double backward, on the float64 model.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time

import pytest
import torch
from conftest import counting_batches, fresh, interleaved, train_step
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from adapeft_optim import GeNAdaPEFT, group_parameters
from adapeft_optim.probe import Probe

LAZY = 8


def _no_grad_forward(model, batch):
    def forward():
        with torch.no_grad():
            return model(**batch).loss

    return forward


@pytest.mark.benchmark(group="probe-parts")
def test_probe_parts(benchmark, lora_gpt2, monkeypatch):
    model, _ = lora_gpt2
    train, held_out = counting_batches(4, seed=0), counting_batches(4, seed=1000)
    base = fresh(model)
    base_opt = torch.optim.AdamW(base.parameters(), lr=1e-4)
    model = fresh(model)
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-4),
        closure=lambda b: model(**b).loss,
        probe_data=held_out,
        groups=group_parameters(model),
        lazy=1,
        max_interval=1,  # every group's curvature measured: the cost of each part
    )
    parts = {"step_inner": [], "measure": [], "slopes": [], "check_joint": []}
    for name, times in parts.items():
        monkeypatch.setattr(Probe, name, _timed(getattr(Probe, name), times))

    def probe_step():
        train_step(model, train[0], opt)

    forward = _no_grad_forward(base, held_out[0])
    t_probe, t_step, t_fwd = interleaved([probe_step, lambda: train_step(base, train[0], base_opt), forward], 8)
    benchmark.pedantic(probe_step, rounds=3)
    k = len(opt.names)
    per_probe = {name: statistics.mean(times) / t_fwd for name, times in parts.items()}
    curvature = per_probe.pop("measure") - per_probe["slopes"]  # the measure() after its slope pass
    extra = (t_probe - t_step) / t_fwd  # what the probe step adds to a training step
    fixed = extra - curvature  # slope pass, joint check, inner step, fits: paid with no curvature measured
    step = t_step / t_fwd
    benchmark.extra_info.update(
        {
            "adamw_step_in_F": round(step, 2),
            **{f"{name}_in_F": round(v, 2) for name, v in per_probe.items()},
            "curvature_forwards_in_F": round(curvature, 2),
            "probe_step_extra_in_F": round(extra, 2),
            "groups": k,
            "floor_ratio_no_curvature": round(1 + fixed / (LAZY * step), 3),
            "per_measured_group": round(curvature / k / (LAZY * step), 3),
            "groups_for_1.5": round((0.5 * LAZY * step - fixed) / (curvature / k), 2),
            "threads": torch.get_num_threads(),
        }
    )


def _timed(method, times):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    return wrapper


def _line(model, batch, names, directions):
    """t ↦ L(w − t·d) with only the parameters ``names`` moved, as a functional call."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(t):
        moved = dict(params)
        for n in names:
            moved[n] = params[n] - t * directions[n]
        return functional_call(model, moved, args=(), kwargs=batch).loss

    return params, loss


def _group_directions(model, group, seed=0):
    """Parameter names of ``group`` and a random direction for each (the size of an Adam step)."""
    by_param = {p: n for n, p in model.named_parameters()}
    names = [by_param[p] for p in group_parameters(model)[group]]
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return names, {n: 1e-3 * torch.randn(params[n].shape, generator=g) for n in names}


@pytest.mark.parametrize("group", ["lora_A", "others", "embed"])
def test_vmap_pair(benchmark, lora_gpt2, group):
    """The pair w ∓ 2η·d of one group in one vmapped forward (``randomness="same"``: both points
    see one dropout mask, as the replayed RNG state gives them), against two forwards."""
    model, _ = lora_gpt2
    benchmark.group = f"vmap-pair-{group}"
    model = fresh(model)
    batch = counting_batches(1, seed=1000)[0]
    names, dirs = _group_directions(model, group)
    params, _ = _line(model, batch, names, dirs)
    stacked = {n: torch.stack([params[n] - 2 * dirs[n], params[n] + 2 * dirs[n]]) for n in names}

    def pair_loss(moved):
        return functional_call(model, {**params, **moved}, args=(), kwargs=batch).loss

    batched = vmap(pair_loss, randomness="same")

    def vmapped():
        with torch.no_grad():
            return batched(stacked)

    forward = _no_grad_forward(model, batch)
    t_vmap, t_fwd = interleaved([vmapped, forward], 10)
    benchmark.pedantic(vmapped, rounds=3)
    benchmark.extra_info.update(
        {"pair_in_F": round(t_vmap / t_fwd, 2), "two_forwards_in_F": 2, "threads": torch.get_num_threads()}
    )


@pytest.mark.parametrize("group", ["lora_B", "others"])
def test_forward_mode_curvature(benchmark, lora_gpt2, group):
    """d²L(w − t·d)/dt² at t = 0 by forward-over-forward jvp: exact, no spacing, no rounding of
    loss differences; against the two forwards of the pair that estimate it."""
    model, _ = lora_gpt2
    benchmark.group = f"forward-mode-{group}"
    model = fresh(model).eval()  # one deterministic line for both
    batch = counting_batches(1, seed=1000)[0]
    names, dirs = _group_directions(model, group)
    _, loss = _line(model, batch, names, dirs)
    one = torch.ones((), dtype=torch.float32)

    def slope(t):
        return jvp(loss, (t,), (one,))[1]

    def second():
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the one attention kernel with forward AD
            return jvp(slope, (torch.zeros(()),), (one,))[1]

    plain = _no_grad_forward(model, batch)

    def forward():
        with sdpa_kernel(SDPBackend.MATH):  # the same attention kernel
            return plain()

    t_second, t_fwd = interleaved([second, forward], 5)
    benchmark.pedantic(second, rounds=2)
    benchmark.extra_info.update(
        {"second_derivative_in_F": round(t_second / t_fwd, 2), "pair_in_F": 2, "threads": torch.get_num_threads()}
    )


@pytest.mark.benchmark(group="one-point")
def test_one_point_curvature_against_the_exact_value(benchmark, lora_gpt2):
    """One probe of the float64 model with the pair (-2, 2) and with one point (2,): each group's
    A against dᵀHd by double backward along the AdamW direction the probe used."""
    model, _ = lora_gpt2
    model = fresh(model).double().eval()
    batch = counting_batches(1, seed=1000)[0]
    with sdpa_kernel(SDPBackend.MATH):  # the one attention kernel with a double backward
        errors = benchmark.pedantic(lambda: {s: _curvature_errors(model, batch, s) for s in PAIR_AND_POINT}, rounds=1)
    for scales, errs in errors.items():
        label = "pair" if len(scales) == 2 else "one_point"
        benchmark.extra_info[f"{label}_median_abs_A_error"] = round(statistics.median(map(abs, errs.values())), 4)
        benchmark.extra_info[f"{label}_max_abs_A_error"] = round(max(map(abs, errs.values())), 4)
        benchmark.extra_info[f"{label}_groups_accepted"] = len(errs)


PAIR_AND_POINT = ((-2.0, 2.0), (2.0,))


def _curvature_errors(model, batch, scales):
    """A / dᵀHd − 1 of every accepted group after one probe of a copy of ``model`` at ``scales``."""
    m = copy.deepcopy(model)
    inner = torch.optim.AdamW(m.parameters(), lr=1e-4)
    opt = GeNAdaPEFT(
        inner,
        closure=functools.partial(_lm_loss, m, batch),
        groups=group_parameters(m),
        lazy=1,
        slope="backward",
        scales=scales,
    )
    _lm_loss(m, batch).backward()
    twin = copy.deepcopy((m, inner))  # the direction per unit lr: the inner step at lr 1
    for p, q in zip(m.parameters(), twin[0].parameters()):
        q.grad = p.grad.clone()  # deepcopy drops .grad
    for g in twin[1].param_groups:
        g["lr"] = 1.0
    twin[1].step()
    dirs = {p: (p.detach() - q.detach()) for p, q in zip(m.parameters(), twin[0].parameters())}
    exact = _exact_curvatures(m, batch, dirs, group_parameters(m))
    opt.step()
    return {r["group"]: r["A"] / exact[r["group"]] - 1 for r in opt.history if r["accepted"]}


def _lm_loss(model, batch):
    """Next-token cross-entropy in the logits' dtype (transformers' loss upcasts to float32 only,
    whose rounding would hide a float64 curvature)."""
    logits = model(input_ids=batch["input_ids"]).logits
    labels = batch["labels"]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


def _exact_curvatures(model, batch, dirs, groups):
    """dᵀHd of each group's direction by double backward (float64)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(_lm_loss(model, batch), params, create_graph=True)
    out = {}
    for name, members in groups.items():
        vec = [dirs[p] if any(p is q for q in members) else torch.zeros_like(p) for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True, allow_unused=True)
        out[name] = float(sum((h * v).sum() for h, v in zip(hv, vec) if h is not None))
    return out
