"""The CUDA paths of the probe: CUDA RNG replay and bf16 autocast. Skipped without a GPU (CI has
none); run them on a CUDA machine with `python -m pytest tests/test_cuda.py -m cuda`."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from adapeft_optim import GeNAdaPEFT, group_parameters

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def model_and_batch():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32)).cuda()
    model.train()  # dropout 0.1: the CUDA generator must be replayed
    x = torch.randint(0, 128, (8, 32), device="cuda")
    return model, x


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_probe_on_cuda_replays_and_restores_the_cuda_rng(autocast):
    model, x = model_and_batch()

    def closure():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return model(x, labels=x).loss

    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3), closure=closure, groups=group_parameters(model), lazy=1
    )
    for _ in range(4):
        closure().backward()
        before = torch.cuda.get_rng_state()
        opt.step()
        assert torch.equal(torch.cuda.get_rng_state(), before)
        opt.zero_grad()
    assert all(p.is_cuda and torch.isfinite(p).all() for p in model.parameters())
    assert sum(r["accepted"] for r in opt.history) >= len(opt.history) // 2
