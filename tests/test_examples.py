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


def _greedy_by_appi(appi: dict[str, float], numel: dict[str, int], budget: float) -> list[str]:
    """The greedy knapsack written out apart from adapeft_optim.selection: groups by APPI
    descending (ties: fewer parameters, then the name), only those with a positive finite APPI,
    each taken when the parameters taken so far plus its own are within ``budget`` of all."""
    total = sum(numel.values())
    order = sorted((g for g, a in appi.items() if 0.0 < a < float("inf")), key=lambda g: (-appi[g], numel[g], g))
    chosen, used = [], 0
    for g in order:
        if (used + numel[g]) / total <= budget:
            chosen.append(g)
            used += numel[g]
    return chosen


def test_hf_trainer(monkeypatch, capsys):
    import ast

    from adapeft_optim import GeNAdaPEFT

    switches = []  # (APPI, numel, requires, groups) whenever the optimizer switches to masked mode
    mask = GeNAdaPEFT.mask

    def recording_mask(self, selection):
        switches.append((dict(self.appi), dict(self.numel), dict(self.requires), tuple(selection.groups)))
        return mask(self, selection)

    monkeypatch.setattr(GeNAdaPEFT, "mask", recording_mask)
    budget = 0.12
    argv = ["--steps", "8", "--lazy", "1", "--budget", str(budget), "--mask-at", "0.5"]
    assert run_example("hf_trainer.py", argv, monkeypatch) == 0
    out = capsys.readouterr().out
    accepted, total = map(int, out.split(" probes accepted")[0].split()[-1].split("/"))
    assert 0 < accepted <= total
    # Masked once, halfway through (step 4 of 8), with the groups the greedy knapsack takes from
    # the optimizer's APPI and sizes at that moment (no LoRA pairs: nothing is required).
    [(appi, numel, requires, masked)] = switches
    assert not requires
    expected = _greedy_by_appi(appi, numel, budget)
    assert expected and sorted(masked) == sorted(expected)
    chosen = out.split("masked mode from step 4: training ")[1].splitlines()[0]
    assert sorted(ast.literal_eval(chosen)) == sorted(expected)
    # The printed group table has every group's share of the parameters; the chosen ones fit.
    sizes = {
        line.split()[0]: float(line.split()[-1].rstrip("%")) / 100
        for line in out.splitlines()
        if line.endswith("%") and " params " in line
    }
    assert sizes.keys() == numel.keys()
    everything = sum(numel.values())
    assert all(abs(sizes[n] - numel[n] / everything) <= 5e-5 for n in numel)
    assert sum(sizes[n] for n in expected) <= budget
    # The last log carries the APPI of every group.
    assert all(f"adapeft/appi/{n}=" in out for n in numel)


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
