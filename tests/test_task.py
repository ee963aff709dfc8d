"""Tests for adapeft_optim.task (re-exporting adapeft_optim.demo.task, .training and adapeft_optim.progress):
the synthetic corpus, the model builders, the cache and the training/evaluation helpers the demo
and the benchmarks share."""

from __future__ import annotations

import functools
import io
import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adapeft_optim import group_parameters
from adapeft_optim import task as T
from adapeft_optim.demo import training

K = T.ANSWER_LENGTH


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "cache"))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- corpus -------------------------------------------------------------------------------------


def test_sample_shape_and_layout():
    ids = T.FINETUNE_TASK.sample(5, gen(0))
    assert ids.shape == (5, T.SEQ_LEN) == (5, 2 * K + 2)
    assert ids.dtype == torch.long
    assert (ids[:, 0] == T.BOS).all() and (ids[:, K + 1] == T.SEP).all()
    body = torch.cat([ids[:, 1 : K + 1], ids[:, K + 2 :]], dim=1)
    assert body.min() >= 4 and body.max() < T.VOCAB_SIZE


@pytest.mark.parametrize("task", [T.PRETRAIN_TASK, T.FINETUNE_TASK], ids=["A", "B"])
def test_answer_is_the_prompt_through_the_symbol_map(task):
    ids = task.sample(64, gen(1))
    prompt, answer = ids[:, 1 : K + 1] - 4, ids[:, K + 2 :] - 4
    sigma = task.symbol_map
    assert sorted(sigma.tolist()) == list(range(T.N_SYMBOLS))  # a permutation
    assert torch.equal(answer, sigma[prompt])


def test_transitions_are_row_stochastic_and_peaked():
    P = T.FINETUNE_TASK.transitions
    assert P.shape == (T.N_SYMBOLS, T.N_SYMBOLS)
    torch.testing.assert_close(P.sum(1), torch.ones(T.N_SYMBOLS, dtype=P.dtype))
    entropy = -(P * P.log()).sum(1).mean().item()
    assert entropy < 0.8 * math.log(T.N_SYMBOLS)  # a learnable structure, not uniform noise


def test_corpus_is_deterministic():
    a = T.FINETUNE_TASK.sample(32, gen(7))
    torch.manual_seed(123)  # the global RNG plays no part
    b = T.FINETUNE_TASK.sample(32, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, T.FINETUNE_TASK.sample(32, gen(8)))
    torch.manual_seed(5)
    e1 = T.FINETUNE_TASK.eval_batch()
    torch.manual_seed(6)
    e2 = T.FINETUNE_TASK.eval_batch()
    assert torch.equal(e1["input_ids"], e2["input_ids"])
    assert e1["input_ids"].shape == (T.EVAL_SIZE, T.SEQ_LEN)


def test_batch_labels_mask_the_prompt_only_for_answer_tasks():
    ft = T.FINETUNE_TASK.batch(4, gen(0))
    assert (ft["labels"][:, : K + 2] == -100).all()
    assert torch.equal(ft["labels"][:, K + 2 :], ft["input_ids"][:, K + 2 :])
    pt = T.PRETRAIN_TASK.batch(4, gen(0))
    assert torch.equal(pt["labels"], pt["input_ids"])


def test_the_two_tasks_differ():
    A, B = T.PRETRAIN_TASK, T.FINETUNE_TASK
    same_map = (A.symbol_map == B.symbol_map).float().mean().item()
    assert same_map < 0.1  # a model that answers through sigma_A is ~always wrong on B
    tv = 0.5 * (A.transitions - B.transitions).abs().sum(1).mean().item()
    assert tv > 0.5  # and the prompts come from another language
    assert A.key() != B.key()


def test_task_validation():
    with pytest.raises(ValueError, match="Invalid loss_on: 'x'"):
        T.SyntheticTask("t", 1, 2, loss_on="x")
    with pytest.raises(ValueError, match="Invalid n: 0"):
        T.FINETUNE_TASK.sample(0, gen(0))


# -- models -------------------------------------------------------------------------------------


def test_parse_size():
    assert T.parse_size("small") == (2, 64, 2)
    assert T.parse_size("large") == (4, 128, 4)
    assert T.parse_size("3x96") == (3, 96, 3)
    with pytest.raises(ValueError, match="Invalid model size 'huge'.*LxD"):
        T.parse_size("huge")
    with pytest.raises(ValueError, match="divisible"):
        T.parse_size((1, 30, 4))


def test_build_model_is_seeded_and_has_an_untied_head():
    a, b = T.build_model("tiny", seed=3), T.build_model("tiny", seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert a.lm_head.weight.data_ptr() != a.transformer.wte.weight.data_ptr()
    state = torch.get_rng_state()
    T.build_model("tiny", seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_add_lora_gives_the_seven_groups_and_keeps_the_function():
    base = T.build_model("tiny", seed=0)
    ids = T.FINETUNE_TASK.sample(2, gen(0))
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = T.add_lora(base, seed=0)
    assert tuple(group_parameters(model)) == T.ALL_GROUPS
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # lora_B starts at zero
    assert all(p.requires_grad for p in model.parameters())
    frozen = T.add_lora(T.build_model("tiny", seed=0), seed=0, train_all=False)
    assert tuple(group_parameters(frozen)) == ("lora_A", "lora_B")


# -- evaluation and training --------------------------------------------------------------------


class _Oracle(nn.Module):
    """Logits that put ``scale`` on the true next token (0: uniform)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        nxt = torch.roll(input_ids, -1, dims=1)
        logits = self.scale * nn.functional.one_hot(nxt, T.VOCAB_SIZE).float()
        return SimpleNamespace(logits=logits)


def test_evaluate_against_oracles():
    perfect = T.evaluate(_Oracle(50.0))
    assert perfect["accuracy"] == 1.0 and perfect["loss"] < 1e-10
    uniform = T.evaluate(_Oracle(0.0))
    assert uniform["loss"] == pytest.approx(math.log(T.VOCAB_SIZE), rel=1e-6)
    assert uniform["accuracy"] == 0.0  # argmax of a tie is token 0 (BOS), never an answer


def test_train_reduces_the_loss_and_is_deterministic():
    torch.manual_seed(0)
    model = T.build_model("tiny", seed=0)
    before = T.evaluate(model, T.PRETRAIN_TASK)
    result = T.train(model, T.PRETRAIN_TASK, 40, lr=3e-3, batch_size=16, seed=0)
    assert result["loss"] < before["loss"] - 0.3
    assert set(result) >= {
        "loss",
        "accuracy",
        "train_loss",
        "trainable",
        "total",
        "fraction",
        "lr",
        "groups",
    }
    assert result["fraction"] == 1.0 and result["lr"] == 3e-3
    again = T.train(T.build_model("tiny", seed=0), T.PRETRAIN_TASK, 40, lr=3e-3, batch_size=16, seed=0)
    assert again == result


def test_train_with_groups_trains_exactly_those():
    model = T.add_lora(T.build_model("tiny", seed=0), seed=0, train_all=False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lm_head" not in n.split(".")}
    result = T.train(model, T.FINETUNE_TASK, 3, groups=("head",), seed=0)
    head = model.base_model.model.lm_head.weight
    assert result["groups"] == ["head"] and result["trainable"] == head.numel()
    assert result["fraction"] == head.numel() / sum(p.numel() for p in model.parameters())
    assert result["lr"] == T.PEFT_LR
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert T.recipe_lr(T.RECIPES["full fine-tuning"]) == T.FULL_LR


def test_probe_returns_the_optimizer_with_appi():
    model = T.add_lora(T.build_model("tiny", seed=0), seed=0)
    opt = T.probe(model, T.FINETUNE_TASK, 4, lazy=2, seed=0)
    assert tuple(opt.appi) == T.ALL_GROUPS
    assert sorted({r["step"] for r in opt.history}) == [0, 2]


# -- progress -----------------------------------------------------------------------------------


def test_line_progress_prints_the_first_step_every_tenth_and_the_last():
    out = io.StringIO()
    bar = T.LineProgress(25, "phase", stream=out)
    for step in range(25):
        bar.set_postfix(loss=f"{step / 10:.3f}")
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    # a line every ceil(25 / 10) = 3 steps, plus step 1 and step 25
    shown = [1, 3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert [int(line.split(": ")[1].split("/")[0]) for line in lines] == shown
    for n, line in zip(shown, lines):
        assert re.fullmatch(rf"  phase: {n}/25 steps, loss {(n - 1) / 10:.3f} \(\d+\.\ds\)", line)


def test_train_and_probe_take_a_progress_factory():
    out = io.StringIO()
    model = T.add_lora(T.build_model("tiny", seed=0), seed=0)
    T.probe(
        model,
        T.FINETUNE_TASK,
        4,
        lazy=2,
        seed=0,
        progress=functools.partial(T.LineProgress, desc="warm-up", stream=out),
    )
    T.train(
        model,
        T.FINETUNE_TASK,
        2,
        seed=0,
        progress=functools.partial(T.LineProgress, desc="train", stream=out),
    )
    starts = [line.split(" steps")[0] for line in out.getvalue().splitlines()]
    assert starts == [
        "  warm-up: 1/4",
        "  warm-up: 2/4",
        "  warm-up: 3/4",
        "  warm-up: 4/4",
        "  train: 1/2",
        "  train: 2/2",
    ]


# -- cache --------------------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "override"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert T.cache_dir() == tmp_path / "override"
    monkeypatch.delenv(T.CACHE_ENV)
    assert T.cache_dir() == tmp_path / "xdg" / "adapeft_optim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert T.cache_dir() == tmp_path / "home" / ".cache" / "adapeft_optim"


def test_pretrained_model_is_cached(monkeypatch):
    first = T.pretrained_model("tiny", steps=3)
    files = list((T.cache_dir() / "pretrained").glob("*.safetensors"))
    assert len(files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been loaded")

    monkeypatch.setattr(training, "pretrain", no_training)  # what pretrained_model calls
    second = T.pretrained_model("tiny", steps=3)
    for (n, p), (_, q) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_unreadable_cache_file_is_rebuilt():
    T.pretrained_model("tiny", steps=2)
    (path,) = (T.cache_dir() / "pretrained").glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="unreadable cached weights"):
        model = T.pretrained_model("tiny", steps=2)
    assert isinstance(model, nn.Module)
    assert path.stat().st_size > 1000
