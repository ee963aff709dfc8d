"""Masked mode against a hand-frozen AdamW loop with the same trainable groups, and against
full fine-tuning, in one run (design §10: goal ≤ 1.05× the hand-frozen loop).

    pytest benchmarks/test_bench_masked.py --benchmark-only

``extra_info`` carries the optimizer state bytes before and after masking.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fresh, interleaved, train_step

from adapeft_optim import GeNAdaPEFT, group_parameters

SELECTED = ("lora_A", "lora_B", "norm", "head")


def state_bytes(opt):
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def hand_frozen(model):
    """What a user writes by hand for PEFT: freeze the rest, AdamW over the trainable ones."""
    for name, params in group_parameters(model).items():
        for p in params:
            p.requires_grad_(name in SELECTED)
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


@pytest.mark.benchmark(group="masked")
def test_masked_handfrozen_adamw_baseline(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model, opt = hand_frozen(fresh(model))
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=40, warmup_rounds=3)
    benchmark.extra_info["state_bytes"] = state_bytes(opt)


@pytest.mark.benchmark(group="masked")
def test_masked_genadapeft(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-4),
        closure=lambda: model(**batch).loss,
        groups=group_parameters(model),
        lazy=10**9,
    )
    for _ in range(2):
        train_step(model, batch, opt)
    before = state_bytes(opt)
    opt.mask(list(SELECTED))
    train_step(model, batch, opt)
    frozen_model, frozen_opt = hand_frozen(fresh(lora_gpt2[0]))
    t_frozen, t_masked = interleaved(
        [lambda: train_step(frozen_model, batch, frozen_opt), lambda: train_step(model, batch, opt)], 60
    )
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=40, warmup_rounds=3)
    benchmark.extra_info.update(
        {
            "state_bytes_before_mask": before,
            "state_bytes": state_bytes(opt),
            "interleaved_ratio": round(t_masked / t_frozen, 3),
        }
    )


@pytest.mark.benchmark(group="masked")
def test_masked_full_finetuning(benchmark, lora_gpt2):
    model, batch = lora_gpt2
    model = fresh(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    benchmark.pedantic(train_step, args=(model, batch, opt), rounds=40, warmup_rounds=3)
    benchmark.extra_info["state_bytes"] = state_bytes(opt)
