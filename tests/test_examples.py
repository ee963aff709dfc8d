"""The scripts in examples/ run, with tiny settings, and do what their docstrings say."""

from __future__ import annotations

import copy
import runpy
import sys
from pathlib import Path

import pytest
import torch

from adapeft_optim import Selection, load_selected
from adapeft_optim import task as T

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "cache"))


def run_example(name: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *argv])
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def test_plain_loop(monkeypatch, capsys):
    assert run_example("plain_loop.py", ["--steps", "6", "--lazy", "2", "--log-every", "2"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.count("step ") == 4  # steps 0, 2, 4 and the last one
    table = out.split("APPI", 1)[1]
    for group in T.ALL_GROUPS:
        assert f"\n{group} " in table, group
    assert "probes accepted" in out


def test_transfer(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--steps",
        "8",
        "--small",
        "tiny",
        "--large",
        "tiny",
        "--pretrain-steps",
        "4",
        "--budget",
        "0.5",
        "--out",
        str(out),
    ]
    assert run_example("transfer.py", argv, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "selected on the small model" in printed and "after loss" in printed
    selection = Selection.load(out / "selection.json")
    assert selection.groups and selection.fraction <= 0.5
    # The saved tensors load onto a fresh copy of the large model and differ from its start.
    fresh = T.add_lora(copy.deepcopy(T.pretrained_model("tiny", steps=4)), seed=0, train_all=False)
    start = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    assert load_selected(fresh, out / "selected.safetensors") == selection
    changed = [n for n, p in fresh.named_parameters() if not torch.equal(p, start[n])]
    assert changed


def test_hf_trainer(monkeypatch, capsys):
    argv = ["--steps", "8", "--lazy", "1", "--budget", "0.12", "--mask-at", "0.5"]
    assert run_example("hf_trainer.py", argv, monkeypatch) == 0
    out = capsys.readouterr().out
    accepted, total = map(int, out.split(" probes accepted")[0].split()[-1].split("/"))
    assert 0 < accepted <= total
    # masked halfway through (step 4 of 8), training groups that fit 12% of the parameters: the
    # printed sizes give the check, and norm (first by APPI, 0.6% of the parameters) is among them
    sizes = {
        line.split()[0]: float(line.split()[-1].rstrip("%")) / 100
        for line in out.splitlines()
        if line.endswith("%") and " params " in line
    }
    chosen = out.split("masked mode from step 4: training ")[1].splitlines()[0]
    names = [n.strip(" '[]") for n in chosen.split(",")]
    assert "norm" in names and sum(sizes[n] for n in names) <= 0.12
    assert "adapeft/appi/norm=" in out


@pytest.mark.parametrize("budget", [0.01, 0.05])
def test_readme_first_code_block_runs_as_written_on_a_tiny_gpt2(budget):
    import transformers

    readme = (EXAMPLES.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("budget=0.01", f"budget={budget}")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(0, 128, (4, 32), generator=g)
        return {"input_ids": ids, "labels": ids}

    scope = {"model": model, "loader": [batch() for _ in range(24)], "probe_batches": [batch() for _ in range(4)]}
    exec(compile(code, "README.md", "exec"), scope)
    opt, sel = scope["opt"], scope["sel"]
    assert set(opt.masked) == set(sel.groups) and sel.groups  # a non-empty selection, trained alone
    assert 0 < sel.fraction <= budget
    assert all(p.requires_grad == (name in sel.groups) for name, ps in opt_groups(opt).items() for p in ps)


def opt_groups(opt):
    out = {}
    for g in opt.param_groups:
        out.setdefault(g["adapeft_name"], []).extend(g["params"])
    return out
