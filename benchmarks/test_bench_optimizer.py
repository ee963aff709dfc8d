"""GeNAdaPEFT against bare AdamW on the same model and batch, in one run (DESIGN §10).

    pytest benchmarks/test_bench_optimizer.py --benchmark-only

Groups: ``step`` (a non-probe training step, goal ≤ 1.03× AdamW), ``probe-*`` (a probe step of
each stencil; its extra time is reported in units of one no-grad forward next to the number of
forwards it runs, goal ≤ 1.10×), ``lazy8-*`` (8 training steps with the default ``lazy=8``:
the amortized overhead).
"""

from __future__ import annotations

import time

import pytest
import torch

from adapeft_optim import GeNAdaPEFT, group_parameters

from conftest import fresh

STENCILS = {"4point": (-2, -1, 1, 2), "3point": (-1, 1)}


def train_step(model, batch, opt):
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def wrapped(model, batch, **kwargs):
    return GeNAdaPEFT(adamw(model), closure=lambda: model(**batch).loss, groups=group_parameters(model), **kwargs)


def nograd_forward_time(model, batch, repeats=20):
    with torch.no_grad():
        model(**batch)
        start = time.perf_counter()
        for _ in range(repeats):
            model(**batch)
    return (time.perf_counter() - start) / repeats


@pytest.mark.benchmark(group="step")
def test_step_adamw_baseline(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = adamw(model)
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=30, warmup_rounds=3)


@pytest.mark.benchmark(group="step")
def test_step_genadapeft_nonprobe(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = wrapped(model, batch, lazy=10**9)
    train_step(model, batch, opt)  # step 0 probes; every later step is a plain one
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("stencil", list(STENCILS))
def test_probe_baseline_and_cost(benchmark, lora_gpt2, stencil):
    model, batch = lora_gpt2
    model = fresh(model)
    benchmark.group = f"probe-{stencil}"
    base = adamw(fresh(model))
    base_model = model
    opt = wrapped(model, batch, lazy=1, scales=STENCILS[stencil])
    k = len(opt.names)
    forwards = len(STENCILS[stencil]) * k + 1
    # Baseline training step and no-grad forward measured here, right before the probe steps.
    base_model2 = fresh(model)
    base = adamw(base_model2)
    for _ in range(3):
        train_step(base_model2, batch, base)
    t0 = time.perf_counter()
    for _ in range(10):
        train_step(base_model2, batch, base)
    plain = (time.perf_counter() - t0) / 10
    fwd = nograd_forward_time(base_model, batch)
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=8, warmup_rounds=1)
    extra = benchmark.stats.stats.median - plain
    benchmark.extra_info.update({
        "forwards_run": forwards,
        "extra_in_forwards": round(extra / fwd, 2),
        "extra_over_forwards": round(extra / (fwd * forwards), 3),
        "plain_step_ms": round(plain * 1e3, 2),
        "forward_ms": round(fwd * 1e3, 2),
    })


@pytest.mark.benchmark(group="lazy8")
def test_lazy8_adamw_baseline(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = adamw(model)

    def eight():
        for _ in range(8):
            train_step(model, batch, opt)

    benchmark.pedantic(eight, rounds=6, warmup_rounds=1)


@pytest.mark.parametrize("stencil", list(STENCILS))
@pytest.mark.benchmark(group="lazy8")
def test_lazy8_genadapeft(benchmark, lora_gpt2, stencil):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = wrapped(model, batch, lazy=8, scales=STENCILS[stencil])

    def eight():
        for _ in range(8):
            train_step(model, batch, opt)

    benchmark.pedantic(eight, rounds=6, warmup_rounds=1)
