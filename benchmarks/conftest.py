"""Shared models for the benchmarks, and a closing table: each benchmark's median, its ratio to
its group's baseline (a test named *baseline*, same run) and its ``extra_info`` (interleaved
ratios, state bytes)."""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch

from adapeft_optim import group_parameters
from adapeft_optim.loop import run_steps

BASELINE_MARK = "baseline"


def gpt2_with_lora(n_layer=4, n_embd=128, seq=64, batch=8, seed=0):
    """A 4-layer GPT-2 (n_embd 128) with LoRA on c_attn, every parameter trainable and an untied
    head, so that group_parameters yields all seven groups; plus one fixed batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=4, vocab_size=256, n_positions=seq, tie_word_embeddings=False
    )
    model = get_peft_model(GPT2LMHeadModel(cfg), LoraConfig(r=8, target_modules=["c_attn"], fan_in_fan_out=True))
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    x = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return model, {"input_ids": x, "labels": x}


@pytest.fixture(scope="module")
def lora_gpt2():
    torch.set_num_threads(torch.get_num_threads())
    model, batch = gpt2_with_lora()
    assert len(group_parameters(model)) == 7
    return model, batch


def counting_batches(n, seed, batch=8, seq=64):
    """Learnable byte sequences (x_t = start + stride·t mod 256, per row): fresh batches for
    training and held-out ones for the probes, so the probes see a loss that training lowers."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        start = torch.randint(0, 256, (batch, 1), generator=g)
        stride = torch.randint(1, 4, (batch, 1), generator=g)
        x = (start + stride * torch.arange(seq)) % 256
        out.append({"input_ids": x, "labels": x})
    return out


def fresh(model):
    return copy.deepcopy(model)


def train_step(model, batch, opt):
    run_steps(model, opt, [batch], 1)


def interleaved(fns, rounds, warmup=2):
    """Median seconds of each function, called in turn round by round."""
    times = [[] for _ in fns]
    for r in range(warmup + rounds):
        for f, ts in zip(fns, times):
            start = time.perf_counter()
            f()
            if r >= warmup:
                ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    by_group = {}
    for bench in session.benchmarks:
        by_group.setdefault(bench.group, []).append(bench)
    lines = []
    for group, benches in sorted(by_group.items(), key=lambda kv: str(kv[0])):
        base = [b for b in benches if BASELINE_MARK in b.name]
        for b in benches:
            ratio = f"  ratio {b.stats.median / base[0].stats.median:6.3f}" if base else ""
            extra = "".join(f"  {k}={v}" for k, v in sorted(b.extra_info.items()))
            lines.append(f"{group:<14} {b.name:<44} median {b.stats.median * 1e3:9.2f} ms{ratio}{extra}")
    if lines:
        terminalreporter.write_sep("-", "ratios to the baseline of each group (same run)")
        for line in lines:
            terminalreporter.write_line(line)
