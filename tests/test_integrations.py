"""Tests for adapeft_optim.integrations: replay closure, HF Trainer, accelerate, AMP."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import weakref

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from torch import nn

from adapeft_optim import GeNAdaPEFT, group_parameters
from adapeft_optim.integrations import (
    BatchLoss,
    GeNAdaPEFTFactory,
    ProbeBatches,
    ReplayClosure,
    replay_closure,
    unwrap_optimizer,
)
from adapeft_optim.integrations.hf import GeNAdaPEFTCallback

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit.*"),
]

VOCAB, SEQ = 128, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models run fastest on one thread, and a shared 2-core machine makes extra threads
    # contend (8x slower measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps process-wide singletons; reset them so each test builds its own."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def gpt2(seed: int = 0, dropout: float = 0.1) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return transformers.GPT2LMHeadModel(config)


def batches(n: int, batch_size: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (batch_size, SEQ), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def wrap(model: nn.Module, closure=None, lr: float = 1e-3, **kwargs) -> GeNAdaPEFT:
    inner = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    return GeNAdaPEFT(inner, closure=closure, groups=group_parameters(model), **kwargs)


# -- replay_closure --------------------------------------------------------------------------------


def test_replay_returns_the_training_loss_bit_for_bit_under_dropout():
    model = gpt2().train()
    batch = batches(1)[0]
    with replay_closure(model) as closure:
        loss = model(**batch).loss
        # Dropout is live: a fresh forward draws other masks and another loss.
        with torch.no_grad():
            assert not torch.equal(model(**batch).loss, loss)
        rng = torch.get_rng_state()
        replayed = closure()
        assert torch.equal(replayed.detach(), loss.detach())
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is put back


def test_replays_and_no_grad_forwards_are_not_recorded():
    model = gpt2().train()
    first, second = batches(2)
    with replay_closure(model) as closure:
        loss = model(**first).loss
        assert closure.forwards == 1
        with torch.enable_grad():
            closure()  # a replay with grad enabled is still not a training forward
        with torch.no_grad():
            model(**second)  # an evaluation forward
        model.eval()
        with torch.inference_mode():
            model(**second)
        model.train()
        assert closure.forwards == 1
        assert torch.equal(closure().detach(), loss.detach())
        model(**second).loss.backward()
        assert closure.forwards == 2


def test_replay_before_any_training_forward_says_how_to_fix():
    model = gpt2()
    with replay_closure(model) as closure:
        assert not closure.recorded
        with pytest.raises(RuntimeError, match="has not seen a training forward"):
            closure()
        model(**batches(1)[0]).loss.backward()
        assert closure.recorded
        opt = wrap(model, closure=closure)
        opt.step()  # the first step is a probe step: it replays the recorded forward
        assert {r["step"] for r in opt.history} == {0}


def test_remove_detaches_the_hook_and_frees_the_batch():
    model = gpt2()
    ids = torch.randint(0, VOCAB, (2, SEQ))
    closure = replay_closure(model)
    model(input_ids=ids, labels=ids)
    ref = weakref.ref(ids)
    del ids
    gc.collect()
    assert ref() is not None  # the closure holds the batch by reference
    closure.remove()
    gc.collect()
    assert ref() is None
    assert len(model._forward_pre_hooks) == 0
    model(**batches(1)[0])
    assert closure.forwards == 1
    with pytest.raises(RuntimeError, match="was removed"):
        closure()
    closure.remove()  # idempotent


def test_context_manager_removes_the_hook():
    model = gpt2()
    with replay_closure(model) as closure:
        assert isinstance(closure, ReplayClosure)
        assert len(model._forward_pre_hooks) == 1
    assert len(model._forward_pre_hooks) == 0


def test_loss_fn_for_outputs_without_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    with replay_closure(model, loss_fn=lambda out: out.pow(2).mean()) as closure:
        loss = model(x).pow(2).mean()
        assert torch.equal(closure().detach(), loss.detach())
    with replay_closure(model) as closure:
        model(x)
        with pytest.raises(TypeError, match="has no loss.*loss_fn="):
            closure()


def test_hf_forward_without_labels_has_no_loss():
    model = gpt2()
    with replay_closure(model) as closure:
        model(input_ids=batches(1)[0]["input_ids"])
        with pytest.raises(TypeError, match="had no\\s+labels"):
            closure()


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        replay_closure(lambda: 0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        replay_closure(nn.Linear(2, 2), loss_fn=3)
    with pytest.raises(TypeError, match="got the string"):
        replay_closure(nn.Linear(2, 2), drop_kwargs="num_items_in_batch")


def test_replay_keeps_the_training_forwards_autocast():
    model = gpt2().train()
    batch = batches(1)[0]
    with replay_closure(model) as closure:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        replayed = closure()  # called outside autocast, replayed inside it
        assert torch.equal(replayed.detach(), loss.detach())
        model.eval()
        with torch.no_grad():
            fp32 = model(**batch).loss
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model(**batch).loss
        assert fp32 != bf16  # so the equality above needs the recorded autocast


def test_num_items_in_batch_is_not_replayed():
    # Trainer passes the token count of the accumulated batch; the replay measures the mean loss.
    model = gpt2(dropout=0.0)
    batch = batches(1)[0]
    with replay_closure(model) as closure:
        partial = model(**batch, num_items_in_batch=torch.tensor(10 * 4 * (SEQ - 1))).loss
        mean = model(**batch).loss
        model(**batch, num_items_in_batch=torch.tensor(10 * 4 * (SEQ - 1)))
        assert torch.allclose(partial * 10, mean)
        assert torch.equal(closure(), mean.detach())
    with replay_closure(model, drop_kwargs=()) as closure:
        model(**batch, num_items_in_batch=torch.tensor(10 * 4 * (SEQ - 1)))
        assert torch.equal(closure(), partial.detach())


def test_peft_model_probes_through_the_replay():
    model = get_peft_model(gpt2(), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    closure = replay_closure(model)
    opt = wrap(model, closure=closure, lazy=1)
    assert opt.names == ["lora_A", "lora_B"]
    for batch in batches(3):
        loss = model(**batch).loss
        loss.backward()
        assert torch.equal(closure().detach(), loss.detach())
        opt.step()
        opt.zero_grad()
    assert closure.forwards == 3
    assert [r["step"] for r in opt.history] == [0, 0, 1, 1, 2, 2]
    assert opt.appi["lora_A"] > 0 or opt.appi["lora_B"] > 0


# -- HF Trainer ------------------------------------------------------------------------------------


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 1) -> None:
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(tmp_path, **kwargs) -> transformers.TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=1e-3,
        dataloader_num_workers=0,
    )
    return transformers.TrainingArguments(**{**defaults, **kwargs})


def _trainer(**kwargs) -> transformers.Trainer:
    trainer = transformers.Trainer(**kwargs)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # prints every log
    return trainer


class _Recorder(transformers.TrainerCallback):
    """Stands in for a report_to integration, and snapshots the weights after every step."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.weights: dict[int, list[torch.Tensor]] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = [p.detach().clone() for p in model.parameters()]


def _train_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_logs_lr_and_appi_of_every_group(tmp_path):
    model = gpt2()
    opt = wrap(model, closure=replay_closure(model), lazy=2)
    trainer = _trainer(
        model=model,
        args=_args(tmp_path, max_steps=10),
        train_dataset=_Tokens(40),
        optimizers=(opt, None),
        callbacks=[GeNAdaPEFTCallback()],
    )
    trainer.train()
    assert isinstance(trainer.optimizer, torch.optim.Optimizer) and trainer.optimizer is not opt
    assert unwrap_optimizer(trainer.optimizer) is opt
    assert sorted({r["step"] for r in opt.history}) == [0, 2, 4, 6, 8]
    assert any(r["accepted"] for r in opt.history)
    assert any(v > 0 for v in opt.appi.values())
    logs = _train_logs(trainer)
    assert [entry["step"] for entry in logs] == list(range(1, 11))
    for entry in logs:
        for name in opt.names:
            assert math.isfinite(entry[f"adapeft/lr/{name}"])
            assert entry[f"adapeft/appi/{name}"] >= 0.0
    # APPI only grows, and the last log has the final values.
    for name in opt.names:
        series = [entry[f"adapeft/appi/{name}"] for entry in logs]
        assert series == sorted(series)
        assert logs[-1][f"adapeft/appi/{name}"] == opt.appi[name]
    # Trainer's default linear schedule ends at 0, and it multiplies the Newton lrs (design §4.2).
    assert all(logs[-1][f"adapeft/lr/{name}"] == 0.0 for name in opt.names)
    assert all(lr == 0.0 for lr in opt.lrs.values())


def test_trainer_probes_once_per_optimizer_step_on_batches_the_step_has_not_seen(tmp_path):
    model = gpt2()
    replay = replay_closure(model)
    opt = wrap(model, closure=replay, lazy=2)
    forwards = []  # (inside opt.step, grad enabled, input_ids) of every forward
    in_step = [False]
    opt.register_step_pre_hook(lambda *_: in_step.__setitem__(0, True))
    opt.register_step_post_hook(lambda *_: in_step.__setitem__(0, False))
    model.register_forward_pre_hook(
        lambda m, args, kwargs: forwards.append((in_step[0], torch.is_grad_enabled(), kwargs["input_ids"].clone())),
        with_kwargs=True,
    )
    dataset = _Tokens(48)
    trainer = _trainer(
        model=model,
        args=_args(tmp_path, max_steps=6, gradient_accumulation_steps=2, logging_steps=2),
        train_dataset=dataset,
        optimizers=(opt, None),
        callbacks=[GeNAdaPEFTCallback()],
    )
    trainer.train()
    # The callback swapped the biased replay for probe batches of the training data.
    assert isinstance(opt.probe_data, ProbeBatches) and isinstance(opt.closure, BatchLoss)
    assert repr(replay).endswith("removed)")
    assert sum(not probe for probe, _, _ in forwards) == 12  # every micro-batch, with grad
    assert all(grad for probe, grad, _ in forwards if not probe)
    assert sorted({r["step"] for r in opt.history}) == [0, 2, 4]  # 6 optimizer steps / lazy
    # A probe: L0 with the slopes (grad on), 2 points per group whose curvature it measures (the
    # others reuse theirs) and the joint point (no grad).
    measured = [sum(not r["reused"] for r in opt.history if r["step"] == s) for s in (0, 2, 4)]
    probes = [grad for probe, grad, _ in forwards if probe]
    assert len(probes) == sum(1 + 2 * m + 1 for m in measured) and sum(probes) == 3
    rows = {tuple(row.tolist()) for row in dataset.ids}
    last_train = None
    for probe, _, ids in forwards:
        if not probe:
            last_train = ids
        else:  # a probe: rows of the dataset, not the micro-batch the gradient came from
            assert all(tuple(row.tolist()) in rows for row in ids)
            assert not torch.equal(ids, last_train)
    first = opt.param_groups[0]["params"][0]
    assert int(opt.state[first]["step"]) == 6  # the inner optimizer stepped once per real step
    assert any(r["accepted"] for r in opt.history)
    assert "adapeft/appi/embed" in _train_logs(trainer)[-1]


def test_trainer_callback_masks_at_a_fraction_and_reaches_reporters(tmp_path):
    model = gpt2()
    opt = wrap(model, closure=replay_closure(model), lazy=1)
    recorder = _Recorder()
    callback = GeNAdaPEFTCallback(mask_at=0.5, budget=0.2)
    trainer = _trainer(
        model=model,
        args=_args(tmp_path, max_steps=8, lr_scheduler_type="constant"),
        train_dataset=_Tokens(32),
        optimizers=(opt, None),
        callbacks=[recorder],
    )
    callback.attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback
    trainer.train()
    assert callback.masked_at == 4
    assert opt.masked is not None and set(opt.masked) < set(opt.names)
    assert opt.selection is not None and set(opt.selection.groups) == set(opt.masked)
    # A reporter registered before the callback sees its values in the logs it receives.
    assert all(f"adapeft/appi/{n}" in logs for logs in recorder.logs for n in opt.names)
    # Unselected groups are frozen from the switch on, selected ones keep training.
    groups = group_parameters(model, include_frozen=True)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    for name, params in groups.items():
        for p in params:
            at_switch, end = recorder.weights[4][index[id(p)]], recorder.weights[8][index[id(p)]]
            assert torch.equal(at_switch, end) == (name not in opt.masked), name
    # Probes after the switch cover only the selected groups.
    assert {r["group"] for r in opt.history if r["step"] >= 4} == set(opt.masked)


def test_trainer_callback_with_a_budget_nothing_fits_warns_and_trains_everything(tmp_path):
    model = gpt2()
    opt = wrap(model, closure=replay_closure(model), lazy=1)
    callback = GeNAdaPEFTCallback(mask_at=2, budget=1e-6)
    trainer = _trainer(
        model=model,
        args=_args(tmp_path, max_steps=4, lr_scheduler_type="constant"),
        train_dataset=_Tokens(16),
        optimizers=(opt, None),
        callbacks=[callback],
    )
    with pytest.warns(RuntimeWarning, match=r"no group fits budget=1e-06 \(greedy order \["):
        trainer.train()
    assert opt.masked is None and callback.masked_at is None
    assert all(p.requires_grad for p in model.parameters())
    assert {r["group"] for r in opt.history if r["step"] == 3} == set(opt.names)


@pytest.mark.parametrize("mask_at", [2, 5], ids=["switch-before-checkpoint", "switch-after-resume"])
def test_trainer_resume_from_checkpoint_is_bit_identical(tmp_path, mask_at):
    def run(output_dir, resume=None, save=False):
        model = gpt2()
        opt = wrap(model, closure=replay_closure(model), lazy=2)
        args = _args(output_dir, max_steps=6, save_strategy="steps" if save else "no", save_steps=3)
        trainer = _trainer(
            model=model,
            args=args,
            train_dataset=_Tokens(24),
            optimizers=(opt, None),
            callbacks=[GeNAdaPEFTCallback(mask_at=mask_at, budget=0.2)],
        )
        trainer.train(resume_from_checkpoint=resume)
        return model, opt

    straight_model, straight = run(tmp_path / "straight")
    run(tmp_path / "saved", save=True)
    resumed_model, resumed = run(tmp_path / "saved", resume=str(tmp_path / "saved" / "checkpoint-3"))
    assert resumed.masked == straight.masked is not None
    assert resumed.appi == straight.appi and resumed.lrs == straight.lrs
    # The history is a log: the resumed run has the records made after the checkpoint.
    assert resumed.history == [r for r in straight.history if r["step"] >= 3]
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_trainer_with_optimizer_factory(tmp_path):
    model = gpt2()
    kwargs = {"lr": 1e-3, "weight_decay": 0.01, "lazy": 2, "betas": (0.9, 0.99)}
    trainer = _trainer(
        model=model,
        args=_args(tmp_path, max_steps=4),
        train_dataset=_Tokens(16),
        optimizer_cls_and_kwargs=(GeNAdaPEFTFactory, kwargs),
        callbacks=[GeNAdaPEFTCallback()],
    )
    trainer.train()
    opt = unwrap_optimizer(trainer.optimizer)
    # The factory's replay closure was swapped for probe batches by the callback.
    assert isinstance(opt.closure, BatchLoss) and opt.closure.module is model
    assert isinstance(opt.probe_data, ProbeBatches)
    assert opt.lazy == 2
    assert opt.names == list(group_parameters(model))
    decay = {g["adapeft_name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"norm": 0.0, "bias": 0.0, "embed": 0.01, "others": 0.01}
    assert all(g["betas"] == (0.9, 0.99) for g in opt.param_groups)
    assert sorted({r["step"] for r in opt.history}) == [0, 2]
    assert "adapeft/lr/others" in _train_logs(trainer)[-1]


def test_factory_rejects_groups_and_non_optimizers():
    model = gpt2()
    with pytest.raises(ValueError, match="granularity="):
        GeNAdaPEFTFactory()(model, groups={})
    with pytest.raises(TypeError, match="torch.optim.Optimizer class"):
        GeNAdaPEFTFactory()(model, optimizer="adamw")
    # What a transformers without optimizer factories would do.
    with pytest.raises(TypeError, match="optimizers=\\(GeNAdaPEFT"):
        GeNAdaPEFTFactory(list(model.parameters()), lr=1e-3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mask_at=4), ValueError, "give both"),
        (dict(budget=0.1), ValueError, "give both"),
        (dict(mask_at=0, budget=0.1), ValueError, "Invalid mask_at: 0"),
        (dict(mask_at=1.5, budget=0.1), ValueError, "Invalid mask_at: 1.5"),
        (dict(mask_at=True, budget=0.1), TypeError, "mask_at must be an int"),
        (dict(mask_at=2, budget=1.5), ValueError, "Invalid budget: 1.5"),
        (dict(mask_at=2, budget=0.1, method="best"), ValueError, "Invalid method"),
        (
            dict(optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)),
            TypeError,
            "no GeNAdaPEFT found in SGD",
        ),
    ],
)
def test_callback_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeNAdaPEFTCallback(**kwargs)


def test_callback_pickles_and_deep_copies():
    callback = GeNAdaPEFTCallback(mask_at=0.25, budget=0.1, method="exact")
    for clone in (pickle.loads(pickle.dumps(callback)), copy.deepcopy(callback)):
        assert type(clone) is GeNAdaPEFTCallback
        assert (clone.mask_at, clone.budget, clone.method) == (0.25, 0.1, "exact")


# -- accelerate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_accelerate_prepare_probes_through_accelerated_optimizer(fresh_accelerate, mixed_precision):
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2, mixed_precision=mixed_precision)
    model = gpt2()
    closure = replay_closure(model)
    opt = wrap(model, closure=closure, lazy=2)
    model, prepared = accelerator.prepare(model, opt)
    assert isinstance(prepared, AcceleratedOptimizer) and prepared.optimizer is opt
    for i, batch in enumerate(batches(8)):
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if i == 1:
                # The replay runs accelerate's autocast forward too: the same loss, bit for bit.
                assert torch.equal(closure().detach(), loss.detach())
            prepared.step()
            prepared.zero_grad()
    # 8 micro-batches, 2 per optimizer step: 4 steps, probes at steps 0 and 2.
    assert sorted({r["step"] for r in opt.history}) == [0, 2]
    assert int(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 4
    assert any(r["accepted"] for r in opt.history)


# -- AMP -------------------------------------------------------------------------------------------


def test_bf16_autocast_closure():
    model = gpt2()
    batch = batches(1)[0]

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**batch).loss

    opt = wrap(model, closure=closure, lazy=1)
    for batch in batches(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert len({r["step"] for r in opt.history}) == 3
    assert all(math.isfinite(r["b"]) and math.isfinite(r["A"]) for r in opt.history)
    assert any(r["accepted"] for r in opt.history)


def _fp16_step(model, scaler, opt, batch):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    out = scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    return loss.detach(), out


def test_fp16_grad_scaler_steps_with_unscaled_gradients():
    # SGD's update is the gradient itself, so a direction taken from scaled gradients would be
    # 65536x the reference's.
    scaled_model, plain_model = gpt2(dropout=0.0), gpt2(dropout=0.0)
    scaled = GeNAdaPEFT(
        torch.optim.SGD(scaled_model.parameters(), lr=0.1),
        closure=replay_closure(scaled_model),
        groups=group_parameters(scaled_model),
        lazy=1,
    )
    plain = GeNAdaPEFT(
        torch.optim.SGD(plain_model.parameters(), lr=0.1),
        closure=replay_closure(plain_model),
        groups=group_parameters(plain_model),
        lazy=1,
    )
    scaler = torch.amp.GradScaler("cpu")
    for batch in batches(3):
        loss, probe_loss = _fp16_step(scaled_model, scaler, scaled, batch)
        assert torch.equal(probe_loss, loss)  # scaler.step returns opt.step's probe L0
        with torch.autocast("cpu", dtype=torch.float16):
            plain_model(**batch).loss.backward()
        plain.step()
        plain.zero_grad()
    assert scaler.get_scale() == 65536.0  # no step was skipped
    for a, b in zip(scaled_model.parameters(), plain_model.parameters()):
        # fp16 gradients underflow without the scale, so near-zero entries differ by ~1e-5;
        # a direction taken from scaled gradients would be off by orders of magnitude.
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    # Same loss lines up to fp16 rounding: where both runs accept a fit, the slopes agree (a
    # direction from scaled gradients would give a slope 65536x larger). Borderline fits may be
    # accepted in one run and not the other.
    both = [(r, q) for r, q in zip(scaled.history, plain.history) if r["accepted"] and q["accepted"]]
    assert both
    for r, q in both:
        assert r["group"] == q["group"] and r["b"] == pytest.approx(q["b"], rel=0.05)


def test_fp16_grad_scaler_skipped_step_leaves_no_probe():
    model = gpt2(dropout=0.0)
    opt = GeNAdaPEFT(
        torch.optim.SGD(model.parameters(), lr=0.1),
        closure=replay_closure(model),
        groups=group_parameters(model),
        lazy=2,
    )
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows fp16: inf gradients
    _, out = _fp16_step(model, scaler, opt, batches(1)[0])
    assert out is None and scaler.get_scale() == 2.0**59
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert opt.history == []
    # The skipped step did not count: the next real step is still the first probe step.
    _fp16_step(model, torch.amp.GradScaler("cpu"), opt, batches(1)[0])
    assert {r["step"] for r in opt.history} == {0}
