"""GeNAdaPEFT under FSDP2 (``fully_shard``): two gloo processes on CPU, against DDP.

Note [Sharded parameters] (optimizer.py): the probes move the ranks' shards tensor by tensor and
reshard every FSDP module a probe forward ran, and the probe losses are all-reduced as under
DDP. The reference is the same run under DDP, which test_ddp.py checks: the FSDP2 run must equal
it bit for bit (parameters, learning rates, APPI, records, selection) over probe steps and the
switch to masked mode, and a torch.distributed.checkpoint (DCP) save and resume mid-run must
give the uninterrupted run bit for bit. FSDP1's flat parameters are refused at construction.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers

from adapeft_optim import GeNAdaPEFT, group_parameters

WORLD = 2
VOCAB, SEQ = 128, 16
STEPS, MASK_AT, LAZY, BUDGET, RESUME_AT = 8, 5, 2, 0.2, 3

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)  # the same initial weights on every rank
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def _build(engine: str):
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _gpt2()
    if engine == "fsdp2":
        for block in model.transformer.h:
            fully_shard(block)
        wrapped = fully_shard(model)
    else:
        wrapped = DDP(model)
    rank = dist.get_rank()
    probes = [_batch(1000 + 10 * i + rank) for i in range(4)]  # different probe data per rank
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        closure=lambda b: wrapped(**b).loss,
        probe_data=probes,
        groups=group_parameters(model),
        lazy=LAZY,
        freeze=False,  # under DDP the reducer must see the same parameters every step
    )
    return model, wrapped, opt


def _steps(wrapped, opt: GeNAdaPEFT, start: int, stop: int) -> None:
    rank = dist.get_rank()
    for step in range(start, stop):
        if step == MASK_AT:
            opt.mask(opt.select(BUDGET))
        wrapped(**_batch(100 * step + rank)).loss.backward()  # different training data per rank
        opt.step()
        opt.zero_grad()


def _snapshot(model: torch.nn.Module, opt: GeNAdaPEFT) -> dict:
    full = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }
    return {
        "params": full,
        "lrs": opt.lrs,
        "appi": opt.appi,
        "history": [dict(r) for r in opt.history],
        "masked": opt.masked,
    }


def _dcp_resume(out_dir: str) -> dict:
    """FSDP2: DCP save at RESUME_AT, a fresh model and optimizer load it, and train on."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, wrapped, opt = _build("fsdp2")
    _steps(wrapped, opt, 0, RESUME_AT)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=f"{out_dir}/ckpt")
    rng = torch.get_rng_state()  # dropout's stream: the training loop's to carry, as any loop's
    del model, wrapped, opt
    model, wrapped, opt = _build("fsdp2")
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=f"{out_dir}/ckpt")
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    torch.set_rng_state(rng)
    opt.history.clear()  # a log, not state: compare the records made after the resume
    _steps(wrapped, opt, RESUME_AT, STEPS)
    return _snapshot(model, opt)


def _fsdp1_refusal() -> str:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = FSDP(_gpt2(), use_orig_params=False, device_id=torch.device("cpu"))
    try:
        GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-3))
    except NotImplementedError as err:
        return str(err)
    return ""


def _worker(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        result = {}
        for engine in ("ddp", "fsdp2"):
            model, wrapped, opt = _build(engine)
            _steps(wrapped, opt, 0, STEPS)
            result[engine] = _snapshot(model, opt)
            if engine == "fsdp2":
                result["fsdp2_history_after_resume"] = [r for r in opt.history if r["step"] >= RESUME_AT]
        result["resumed"] = _dcp_resume(out_dir)
        result["fsdp1"] = _fsdp1_refusal()
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _same_records(a: list[dict], b: list[dict]) -> bool:
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return x == y

    return len(a) == len(b) and all(r.keys() == s.keys() and all(same(r[k], s[k]) for k in r) for r, s in zip(a, b))


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert a["lrs"] == b["lrs"] and a["appi"] == b["appi"] and a["masked"] == b["masked"]
    assert _same_records(a["history"], b["history"])


def test_fsdp2_equals_ddp_bit_for_bit_over_probes_and_the_mask_switch(ranks):
    for rank in ranks:
        ddp, fsdp2 = rank["ddp"], rank["fsdp2"]
        assert ddp["masked"] is not None and len(ddp["history"]) > 0  # probes ran and the switch happened
        assert any(r["case"] is not None for r in ddp["history"])
        _assert_same_run(fsdp2, ddp)
    _assert_same_run(ranks[0]["fsdp2"], ranks[1]["fsdp2"])  # and the ranks agree


def test_fsdp2_dcp_save_and_resume_is_bit_identical(ranks):
    for rank in ranks:
        resumed, straight = rank["resumed"], rank["fsdp2"]
        for name in straight["params"]:
            assert torch.equal(resumed["params"][name], straight["params"][name]), name
        assert resumed["lrs"] == straight["lrs"] and resumed["appi"] == straight["appi"]
        assert resumed["masked"] == straight["masked"]
        assert _same_records(resumed["history"], rank["fsdp2_history_after_resume"])


def test_fsdp1_flat_parameters_are_refused_at_construction(ranks):
    for rank in ranks:
        assert "flat parameters are not supported" in rank["fsdp1"] and "fully_shard" in rank["fsdp1"]
