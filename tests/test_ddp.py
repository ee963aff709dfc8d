"""GeNAdaPEFT under DistributedDataParallel: two gloo processes on CPU, different data per rank.

design §4.9: probe losses are all-reduced (mean) before fitting, so every rank computes the same
learning rates, APPI, records and selection, and the parameters stay identical. Masked mode has
two supported paths, both run here: ``freeze=False`` (DDP keeps reducing every gradient, the
optimizer drops the unselected ones), and ``freeze=True`` followed by re-wrapping the module in
a new DDP (which then registers only the still-trainable parameters).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers
from torch.nn.parallel import DistributedDataParallel as DDP

from adapeft_optim import GeNAdaPEFT, group_parameters
from adapeft_optim.integrations import BatchLoss
from adapeft_optim.integrations.hf import GeNAdaPEFTCallback

WORLD = 2
VOCAB, SEQ = 128, 16
STEPS, MASKED_STEPS, LAZY, BUDGET = 6, 3, 2, 0.2

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)  # the same initial weights on every rank
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def _train(ddp: DDP, opt: GeNAdaPEFT, data: torch.Generator, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, SEQ), generator=data)
        loss = ddp(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _snapshot(model: torch.nn.Module, opt: GeNAdaPEFT) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "lrs": opt.lrs,
        "appi": opt.appi,
        "history": [dict(r) for r in opt.history],
        "masked": opt.masked,
    }


def _run_unmasked_then_masked(rank: int, freeze: bool) -> dict:
    model = _gpt2()
    ddp = DDP(model)
    # Each rank probes batches of its own (never its gradient's); the losses are all-reduced.
    probe = torch.Generator().manual_seed(200 + rank)
    probe_batches = [
        {"input_ids": ids, "labels": ids}
        for ids in (torch.randint(0, VOCAB, (4, SEQ), generator=probe) for _ in range(4))
    ]
    forwards = []
    ddp.module.register_forward_pre_hook(lambda m, a: forwards.append(torch.is_grad_enabled()))
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        closure=BatchLoss(ddp),
        probe_data=probe_batches,
        groups=group_parameters(model),
        lazy=LAZY,
        freeze=freeze,
    )
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees different batches
    losses = _train(ddp, opt, data, STEPS)
    before = _snapshot(model, opt)
    opt.mask(opt.select(BUDGET))
    if freeze:
        # DDP registered every parameter; a frozen one would never be reduced ("Expected to have
        # finished reduction in the prior iteration"). A new DDP sees only the trainable ones.
        del ddp
        ddp = DDP(model)
    _train(ddp, opt, data, MASKED_STEPS)
    return {"losses": losses, "before": before, "after": _snapshot(model, opt), "forwards": sum(forwards)}


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file store in the test's own folder: no port to pick (and race for) on a shared machine.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    try:
        results = {freeze: _run_unmasked_then_masked(rank, freeze) for freeze in (False, True)}
        # The Trainer callback refuses to plan a freezing switch under DDP, before training starts.
        model = _gpt2()
        opt = GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-3), groups=group_parameters(model))
        callback = GeNAdaPEFTCallback(opt, mask_at=2, budget=BUDGET)
        try:
            callback.on_train_begin(None, transformers.TrainerState(max_steps=4), None)
            results["callback_error"] = None
        except ValueError as err:
            results["callback_error"] = str(err)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _same_records(a: list[dict], b: list[dict]) -> bool:
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return x == y

    return len(a) == len(b) and all(r.keys() == s.keys() and all(same(r[k], s[k]) for k in r) for r, s in zip(a, b))


@pytest.mark.parametrize("freeze", [False, True], ids=["freeze=False", "freeze=True+rewrap"])
def test_ranks_with_different_data_agree_exactly(ranks, freeze):
    r0, r1 = ranks[0][freeze], ranks[1][freeze]
    assert r0["losses"] != r1["losses"]  # the ranks did see different batches
    for phase in ("before", "after"):
        a, b = r0[phase], r1[phase]
        assert a["lrs"] == b["lrs"]
        assert a["appi"] == b["appi"]
        assert _same_records(a["history"], b["history"])
        assert a["params"].keys() == b["params"].keys()
        for name in a["params"]:
            assert torch.equal(a["params"][name], b["params"][name]), (phase, name)
    before = r0["before"]
    assert sorted({r["step"] for r in before["history"]}) == list(range(0, STEPS, LAZY))
    assert any(r["accepted"] for r in before["history"])
    assert any(v > 0 for v in before["appi"].values())
    assert r0["forwards"] == STEPS + MASKED_STEPS  # training forwards with grad; probes ran without


@pytest.mark.parametrize("freeze", [False, True], ids=["freeze=False", "freeze=True+rewrap"])
def test_masked_mode_under_ddp(ranks, freeze):
    run = ranks[0][freeze]
    masked = run["after"]["masked"]
    assert masked is not None and masked == ranks[1][freeze]["after"]["masked"]
    model = _gpt2()
    groups = group_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    changed = set()
    for group, params in groups.items():
        for p in params:
            name = names[id(p)]
            moved = not torch.equal(run["before"]["params"][name], run["after"]["params"][name])
            assert moved == (group in masked), (group, name)
            if moved:
                changed.add(group)
    assert changed == set(masked)
    # Probes after the switch cover only the selected groups.
    late = {r["group"] for r in run["after"]["history"] if r["step"] >= STEPS}
    assert late <= set(masked) and late


def test_callback_refuses_freezing_masked_mode_under_ddp(ranks):
    for rank in ranks:
        assert rank["callback_error"] is not None
        assert "freeze=False" in rank["callback_error"]
