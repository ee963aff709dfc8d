"""GeNAdaPEFT against bare AdamW on the same model and batch, in one run (design §10).

    pytest benchmarks/test_bench_optimizer.py --benchmark-only

Each candidate is timed interleaved with its baseline, round by round, so drifting load on a
shared machine hits both alike; the ratios land in ``extra_info`` and in the closing table.

- ``step``: a non-probe training step (forward, backward, step, zero_grad); goal ≤ 1.03×.
- ``probe-*``: a probe step of each stencil; its extra time over a plain step, in units of one
  no-grad forward, next to the number of forwards it runs; goal ≤ 1.10× that number.
- ``lazy8-*``: 8 training steps at the default ``lazy=8`` with 7 groups: the amortized cost.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fresh, interleaved, train_step

from adapeft_optim import GeNAdaPEFT, group_parameters

STENCILS = {"4point": (-2, -1, 1, 2), "3point": (-1, 1)}


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def wrapped(model, batch, **kwargs):
    return GeNAdaPEFT(adamw(model), closure=lambda: model(**batch).loss, groups=group_parameters(model), **kwargs)


@pytest.mark.benchmark(group="step")
def test_step_adamw_baseline(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = adamw(model)
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=30, warmup_rounds=3)


@pytest.mark.benchmark(group="step")
def test_step_genadapeft_nonprobe(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    base_model = fresh(model)
    base = adamw(base_model)
    model = fresh(model)
    opt = wrapped(model, batch, lazy=10**9)
    train_step(model, batch, opt)  # step 0 probes; every later step is a plain one
    t_base, t_opt = interleaved(
        [lambda: train_step(base_model, batch, base), lambda: train_step(model, batch, opt)], 60
    )
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=30, warmup_rounds=3)
    benchmark.extra_info["interleaved_ratio"] = round(t_opt / t_base, 3)


@pytest.mark.parametrize("stencil", list(STENCILS))
def test_probe_cost(benchmark, lora_gpt2, stencil):
    model, batch = lora_gpt2
    benchmark.group = f"probe-{stencil}"
    base_model = fresh(model)
    base = adamw(base_model)
    model = fresh(model)
    opt = wrapped(model, batch, lazy=1, scales=STENCILS[stencil])
    forwards = len(STENCILS[stencil]) * len(opt.names) + 1

    def forward():
        with torch.no_grad():
            base_model(**batch)

    t_probe, t_plain, t_fwd = interleaved(
        [lambda: train_step(model, batch, opt), lambda: train_step(base_model, batch, base), forward], 8
    )
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=3)
    extra = t_probe - t_plain
    benchmark.extra_info.update(
        {
            "forwards_run": forwards,
            "extra_in_forwards": round(extra / t_fwd, 2),
            "extra_over_forwards": round(extra / (t_fwd * forwards), 3),
            "plain_step_ms": round(t_plain * 1e3, 2),
            "forward_ms": round(t_fwd * 1e3, 2),
        }
    )


@pytest.mark.parametrize("stencil", list(STENCILS))
def test_lazy8_amortized(benchmark, lora_gpt2, stencil):
    model, batch = lora_gpt2
    benchmark.group = f"lazy8-{stencil}"
    base_model = fresh(model)
    base = adamw(base_model)
    model = fresh(model)
    opt = wrapped(model, batch, lazy=8, scales=STENCILS[stencil])

    def eight(m, o):
        for _ in range(8):
            train_step(m, batch, o)

    t_opt, t_base = interleaved([lambda: eight(model, opt), lambda: eight(base_model, base)], 5, warmup=1)
    benchmark.pedantic(eight, args=(model, opt), rounds=2)
    benchmark.extra_info["interleaved_ratio"] = round(t_opt / t_base, 3)
