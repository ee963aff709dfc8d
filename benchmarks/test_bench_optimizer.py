"""GeNAdaPEFT against bare AdamW on the same model and batch, in one run (design §10).

    pytest benchmarks/test_bench_optimizer.py --benchmark-only

Each candidate is timed interleaved with its baseline, round by round, so drifting load on a
shared machine hits both alike; the ratios land in ``extra_info`` and in the closing table.

- ``step``: a non-probe training step (forward, backward, step, zero_grad); goal ≤ 1.03×.
- ``probe-*``: a probe step of each stencil; its extra time over a plain step, in units of one
  no-grad forward, next to the number of forwards it runs; goal ≤ 1.10× that number.
- ``lazy8-*-K*``: the first 256 steps of a run at the default ``lazy=8``, probing a held-out
  batch, with 7 groups (everything trainable) and 2 (LoRA only), against AdamW on the same
  trainable parameters: the amortized cost, settled groups skipped as by default.
- ``algorithm2-*``: Algorithm 2 end to end (probe 10% of T on a small model or on the same
  model, then train the selection for T) against plain LoRA for T steps.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import counting_batches, fresh, gpt2_with_lora, interleaved, train_step

from adapeft_optim import GeNAdaPEFT, group_parameters, transfer_selection

# Probe modes (Note [Slopes from a backward pass]): the paper's 4-point stencil, the 3-point one,
# and the default, b from one backward and A from the pair (-2, 2).
MODES = {
    "4point": {"slope": "stencil", "scales": (-2, -1, 1, 2)},
    "3point": {"slope": "stencil", "scales": (-1, 1)},
    "backward": {"slope": "backward"},
    "backward-interval8": {"slope": "backward", "max_interval": 8},  # curvatures reused longer
}


def forwards_per_probe(mode, k, joint=True):
    """No-grad forwards of a probe step probing k groups (the backward mode adds a backward)."""
    if mode.startswith("backward"):
        return 1 + 2 * k + (1 if joint else 0)  # L0's forward is the backward's
    return 1 + len(MODES[mode]["scales"]) * k + (2 if joint else 0)


ROUNDS = 4  # x 64 steps: the amortized runs
ALG2_STEPS = 320  # T of the Algorithm 2 run (32 probing steps, then 320 PEFT steps)
ALG2_BUDGET = 0.1


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


@pytest.mark.parametrize("stencil", ["4point", "3point", "backward"])
def test_probe_cost(benchmark, lora_gpt2, stencil):
    model, batch = lora_gpt2
    benchmark.group = f"probe-{stencil}"
    base_model = fresh(model)
    base = adamw(base_model)
    model = fresh(model)
    # Every group's line measured at every probe (no reuse, no skipping): the cost of one probe.
    opt = wrapped(model, batch, lazy=1, joint_check=False, max_interval=1, **MODES[stencil])
    forwards = forwards_per_probe(stencil, len(opt.names), joint=False)

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


def _only(model, names):
    """Freeze every group but ``names``: K = len(names) groups, as a PEFT run has."""
    for name, params in group_parameters(model).items():
        for p in params:
            p.requires_grad_(name in names)
    return model


def _trainable_adamw(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _timed_rounds(fns, rounds):
    """Total seconds of each function over ``rounds`` interleaved rounds (state carries on)."""
    totals = [0.0] * len(fns)
    for _ in range(rounds):
        for i, f in enumerate(fns):
            start = time.perf_counter()
            f()
            totals[i] += time.perf_counter() - start
    return totals


@pytest.mark.parametrize(
    ("stencil", "k", "probe_rows"),
    [
        ("4point", 7, 8),
        ("3point", 7, 8),
        ("backward", 7, 8),
        ("backward-interval8", 7, 8),
        ("3point", 7, 4),
        ("backward", 7, 4),
        ("3point", 2, 8),
        ("backward", 2, 8),
    ],
)
def test_lazy8_amortized(benchmark, lora_gpt2, stencil, k, probe_rows):
    """A run's first ``ROUNDS * 64`` steps at ``lazy=8``, against AdamW on the same trainable set,
    on learnable batches of 8 rows; the probes draw held-out batches of ``probe_rows`` rows.

    The whole run is timed (its first probes included), and the groups whose line each probe step
    measured are counted from the history (Notes [Settled groups], [Curvature reuse])."""
    model, _ = lora_gpt2
    benchmark.group = f"lazy8-{stencil}-K{k}-probe{probe_rows}"
    keep = ("lora_A", "lora_B") if k == 2 else tuple(group_parameters(model))
    base_model, model = _only(fresh(model), keep), _only(fresh(model), keep)
    base = _trainable_adamw(base_model)
    train, held_out = counting_batches(16, seed=0), counting_batches(8, seed=1000, batch=probe_rows)
    opt = GeNAdaPEFT(
        _trainable_adamw(model),
        closure=lambda b: model(**b).loss,
        probe_data=held_out,
        groups=group_parameters(model),
        lazy=8,
        **MODES[stencil],
    )
    assert len(opt.names) == k

    def run(m, o, steps=64):
        for i in range(steps):
            train_step(m, train[i % len(train)], o)

    run(base_model, base, 8)  # the baseline's first steps (allocations) are not its cost
    t_opt, t_base = _timed_rounds([lambda: run(model, opt), lambda: run(base_model, base)], ROUNDS)
    # Groups whose line a probe step measured (a reused curvature costs no forward).
    probed = [sum(r["step"] == s and not r["reused"] for r in opt.history) for s in range(0, ROUNDS * 64, 8)]
    benchmark.pedantic(run, args=(model, opt, 8), rounds=1)
    half = len(probed) // 2
    backward = " + backward" if stencil.startswith("backward") else ""
    benchmark.extra_info.update(
        {
            "interleaved_ratio": round(t_opt / t_base, 3),
            "groups_probed_first_half": round(sum(probed[:half]) / half, 2),
            "groups_probed_second_half": round(sum(probed[half:]) / (len(probed) - half), 2),
            "forwards_every_group": f"{forwards_per_probe(stencil, k)}{backward}",
            "steps": ROUNDS * 64,
            "threads": torch.get_num_threads(),
        }
    )


@pytest.mark.parametrize(("source", "lazy"), [("small", 2), ("same", 2), ("small", 8)])
def test_algorithm2_end_to_end(benchmark, lora_gpt2, source, lazy):
    """Algorithm 2 against plain LoRA, T = ``ALG2_STEPS`` steps on the 4x128 model M.

    Part I: Algorithm 1 (every group trainable, GeNAdaPEFT at ``lazy`` 2 or 8) for 10% of T on the
    model m, m a 2x64 GPT-2 (``small``, the paper's setting) or M itself (``same``). Part II: the
    selection at ``ALG2_BUDGET``, re-solved for M by :func:`transfer_selection`, trained on M by
    AdamW with everything else frozen (the standard PEFT run ``Selection.to_peft_config`` sets up)
    for T steps. Plain LoRA trains lora_A + lora_B on M for T steps. Interleaved, same batches."""
    model, _ = lora_gpt2
    benchmark.group = f"algorithm2-{source}-lazy{lazy}"
    steps = ALG2_STEPS
    train, held_out = counting_batches(16, seed=0), counting_batches(8, seed=1000)
    small = gpt2_with_lora(n_layer=2, n_embd=64)[0] if source == "small" else model

    def fit(m, names, n):
        m = _only(fresh(m), names)
        o = _trainable_adamw(m)
        for i in range(n):
            train_step(m, train[i % len(train)], o)

    def plain():
        fit(model, ("lora_A", "lora_B"), steps)

    chosen = []

    def algorithm2():
        m = fresh(small)
        o = GeNAdaPEFT(
            torch.optim.AdamW(m.parameters(), lr=1e-4),
            closure=lambda b: m(**b).loss,
            probe_data=held_out,
            groups=group_parameters(m),
            lazy=lazy,  # 2: 16 probes in the 32 warm-up steps; 8: the paper's cost setting (Φ = 8), 4 probes
        )
        start = time.perf_counter()
        for i in range(steps // 10):
            train_step(m, train[i % len(train)], o)
        part1.append(time.perf_counter() - start)
        selection = transfer_selection(o.appi, model, ALG2_BUDGET, source_numel=o.numel, requires=o.requires)
        chosen.append(selection)
        fit(model, selection.groups, steps)

    part1: list[float] = []
    t_alg2, t_plain = _timed_rounds([algorithm2, plain], 3)
    benchmark.pedantic(plain, rounds=1)
    selection = chosen[-1]
    benchmark.extra_info.update(
        {
            "ratio_to_plain_lora": round(t_alg2 / t_plain, 3),
            "part1_over_plain": round(sum(part1) / t_plain, 3),  # Algorithm 1: the warm-up
            "part2_over_plain": round((t_alg2 - sum(part1)) / t_plain, 3),  # the selection's PEFT run
            "selection": "+".join(selection.groups),
            "selected_fraction": round(selection.fraction, 4),
            "steps": f"{steps // 10} probing + {steps} PEFT vs {steps}",
            "threads": torch.get_num_threads(),
        }
    )
