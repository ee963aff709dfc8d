"""Tests for the ``adapeft`` command line: ``demo`` with tiny settings (files, tables,
determinism) and ``select`` on a tiny model saved to a temporary folder (happy paths and
every input error: exit status 2 and one line on stderr)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adapeft_optim
from adapeft_optim import Selection, cli
from adapeft_optim import task as T
from adapeft_optim.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
# What `adapeft --help` must not pay for: the application packages. torch and numpy are the
# core library, imported by `import adapeft_optim` itself (plain imports, no lazy loader).
HEAVY = ("transformers", "peft", "matplotlib", "tokenizers")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_DEMO = [
    "--steps",
    "20",
    "--small",
    "tiny",
    "--large",
    "tiny",
    "--pretrain-steps",
    "20",
    "--budget",
    "0.5",
    "--quiet",
]
DEMO_PNGS = ("ppi_heatmap.png", "appi_curves.png", "frontier.png", "comparison.png")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _tmp_cache(cache, monkeypatch):
    monkeypatch.setenv(T.CACHE_ENV, str(cache))


@pytest.fixture(autouse=True)
def _keep_threads():
    # --threads sets torch's thread count for the whole process; the suite runs on one.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_valid_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.std(pixels[..., :3])) > 0.01, f"{path} is blank"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the printed table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # header, rule
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def expected_probe_counts(history) -> dict[str, tuple[int, int, int]]:
    """(probes, valued, accepted) per group, counted from the records themselves."""
    out: dict[str, list[int]] = {}
    for r in history:
        c = out.setdefault(r["group"], [0, 0, 0])
        c[0] += 1
        c[1] += r["case"] is not None
        c[2] += bool(r["accepted"])
    return {g: tuple(c) for g, c in out.items()}


# -- demo ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cache):
    """One tiny demo run (cold cache: it pre-trains), shared by the tests below."""
    out = tmp_path_factory.mktemp("demo1")
    mp = pytest.MonkeyPatch()
    mp.setenv(T.CACHE_ENV, str(cache))
    try:
        code = main(["demo", "--out", str(out), *TINY_DEMO])
    finally:
        mp.undo()
    assert code == 0
    return out


def test_demo_writes_its_files(demo_run):
    for name in ("results.json", "selection.json", *DEMO_PNGS):
        assert (demo_run / name).is_file(), name
    for name in DEMO_PNGS:
        assert_valid_png(demo_run / name)


def test_demo_results_json(demo_run):
    results = json.loads((demo_run / "results.json").read_text())
    assert set(results) >= {
        "config",
        "task",
        "models",
        "warmup",
        "appi",
        "frontier",
        "selection",
        "comparison",
        "history",
        "files",
    }
    assert [row["name"] for row in results["comparison"]] == ["AdaPEFT", *T.RECIPES]
    for row in results["comparison"]:
        assert set(row) >= {"groups", "trainable", "fraction", "loss", "accuracy", "lr"}
        assert 0 < row["fraction"] <= 1 and 0 <= row["accuracy"] <= 1 and math.isfinite(row["loss"])
    assert {row["group"] for row in results["appi"]} == set(T.ALL_GROUPS)
    assert results["warmup"]["steps"] == 8  # 10% of 20 steps, at least 4 probes at lazy 2
    assert results["config"]["threads"] == 1  # the demo's default, part of what fixes the numbers
    counts = expected_probe_counts(results["history"])
    assert {
        row["group"]: (row["probes"], row["valued"], row["accepted"]) for row in results["warmup"]["per_group"]
    } == counts
    assert results["warmup"]["valued"] == sum(c[1] for c in counts.values())
    # The frontier starts empty and grows by one group per point, in APPI order.
    frontier = results["frontier"]
    assert frontier[0] == {"fraction": 0.0, "value": 0.0, "groups": []}
    assert all(len(p["groups"]) == k for k, p in enumerate(frontier))
    selection = Selection.load(demo_run / "selection.json")
    assert selection.to_dict() == results["selection"]
    assert 0 < selection.fraction <= 0.5
    assert results["comparison"][0]["groups"] == list(selection.groups)
    # The selection is a greedy prefix: the largest frontier point within the budget.
    fitting = [p for p in frontier if p["fraction"] <= 0.5]
    assert list(selection.groups) == fitting[-1]["groups"]


def test_demo_is_deterministic(demo_run, tmp_path):
    # The first run pre-trained and cached the models; this one loads them. Same seed, same file.
    assert main(["demo", "--out", str(tmp_path), *TINY_DEMO, "--no-plots"]) == 0
    first = json.loads((demo_run / "results.json").read_text())
    second = json.loads((tmp_path / "results.json").read_text())
    assert second["files"] == ["results.json", "selection.json"]
    first["files"], second["files"] = [], []
    first["config"]["plots"] = second["config"]["plots"]
    assert first == second
    assert not list(tmp_path.glob("*.png"))


def test_demo_prints_the_tables(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), *TINY_DEMO, "--no-plots", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "APPI after the warm-up" in out and "greedy frontier" in out
    for name in ("AdaPEFT", *T.RECIPES):
        assert name in out
    assert "ready in" not in out and "pre-trained weights cache" not in out  # --quiet: tables


def test_demo_without_a_terminal_prints_progress_lines_and_the_probe_summary(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), *TINY_DEMO, "--no-plots", "--seed", "2"]
    args.remove("--quiet")
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "seed 2, 1 torch thread)" in out.splitlines()[0]
    # every phase reports as it goes: its first step and its last, as plain lines
    for phase, steps in [("warm-up (probes)", 8), *[(f"{r} (large)", 20) for r in T.RECIPES]]:
        assert f"  {phase}: 1/{steps} steps, loss " in out, phase
        assert f"  {phase}: {steps}/{steps} steps, loss " in out, phase
    assert "\r" not in out  # no tqdm bars in a log
    results = json.loads((tmp_path / "results.json").read_text())
    counts = expected_probe_counts(results["history"])
    rows = table_rows(out, "group   valued")
    assert {r[0]: (r[1], r[2]) for r in rows} == {g: (f"{v}/{n}", f"{a}/{n}") for g, (n, v, a) in counts.items()}
    # the warning names exactly the groups under 3 valued probes
    few = sorted(g for g, (_, v, _) in counts.items() if v < 3)
    warned = [line for line in captured.err.splitlines() if "valued probes" in line]
    if few:
        assert len(warned) == 1 and warned[0].startswith("adapeft demo: warning: ")
        named = re.findall(r"(\w+) \d+/\d+", warned[0].split(" for ")[1].split(" (valued")[0])
        assert sorted(named) == few
    else:
        assert not warned


def test_demo_budget_below_every_group(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), *TINY_DEMO, "--no-plots", "--budget", "0.0001"]
    assert main(args) == 2
    err = one_line_error(capsys)
    # the smallest group that fits is named with the budget that takes it
    assert "selects no group" in err and "the smallest budget that selects something is" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--small", "huge"], "Invalid model size 'huge'"),
        (["--budget", "2"], "invalid budget '2'"),
        (["--steps", "0"], "invalid value '0'"),
    ],
)
def test_demo_rejects_bad_settings(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_demo_out_must_not_be_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--out", str(target), *TINY_DEMO]) == 2
    assert "is a file" in one_line_error(capsys)


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "adapeft_optim", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--budget" in proc.stdout


@pytest.mark.parametrize("command", [[], ["demo"], ["select"]], ids=["top", "demo", "select"])
def test_help_imports_no_heavy_package(command):
    # -X importtime lists every module the interpreter imported, one per stderr line.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "adapeft_optim", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "usage: adapeft" in proc.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "adapeft_optim" in imported  # the listing is there
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_the_core_runs_without_the_hf_packages():
    """The library is torch + numpy: a GeNAdaPEFT run and a selection import neither transformers
    nor peft (issue 13; they are the hf extra, which adapeft_optim.integrations uses)."""
    code = (
        "import sys, torch\n"
        "from adapeft_optim import GeNAdaPEFT, group_parameters\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))\n"
        "x = torch.randn(16, 4)\n"
        "opt = GeNAdaPEFT(torch.optim.AdamW(m.parameters(), lr=1e-2), closure=lambda b: m(b).square().mean(),\n"
        "                 probe_data=[x], groups=group_parameters(m), lazy=1)\n"
        "for _ in range(3):\n"
        "    m(x).square().mean().backward(); opt.step(); opt.zero_grad()\n"
        "opt.select(1.0)\n"
        "print(sorted(k for k in ('transformers', 'peft') if k in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_commands_without_the_hf_extra_name_it(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    assert main(["demo", "--steps", "2"]) == 2
    assert "needs peft: pip install 'adapeft-optim[hf]'" in capsys.readouterr().err


def test_every_public_name_still_imports():
    for name in adapeft_optim.__all__:
        assert getattr(adapeft_optim, name) is not None, name
    assert adapeft_optim.selection.Selection is Selection  # submodules as attributes
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        adapeft_optim.nope  # noqa: B018


def test_demo_help_text(capsys):
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "for ~10% of the steps" in out and "%%" not in out
    # the defaults the help states are the task's (kept apart so --help loads no torch)
    sizes = ", ".join(f"{k} ({v[0]}x{v[1]})" for k, v in T.SIZES.items())
    assert f"probed model size: {sizes} or LxD" in out
    assert f"cached per size (default: {T.PRETRAIN_STEPS})" in out
    assert f"sequences per step (default: {T.BATCH_SIZE})" in out
    assert cli.parser._DEMO_PRETRAIN_STEPS == T.PRETRAIN_STEPS and cli.parser._DEMO_BATCH_SIZE == T.BATCH_SIZE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "invalid device 'gpu': use auto, cpu, cuda, cuda:N"),
        (["--threads", "0"], "invalid value '0': use an integer >= 1"),
        (["--method", "best"], "invalid choice: 'best'"),
    ],
)
def test_bad_options_are_one_line(tiny_model, lm_data, tmp_path, capsys, args, message):
    assert select(tiny_model, lm_data, tmp_path / "out", *args) == 2
    err = one_line_error(capsys)
    assert err.startswith("adapeft select: error: ") and message in err
    assert err.endswith("(see adapeft select --help)")


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


# -- select: fixtures ---------------------------------------------------------------------------

WORDS = [
    "good",
    "bad",
    "movie",
    "film",
    "great",
    "awful",
    "plot",
    "acting",
    "the",
    "was",
    "very",
    "not",
]
TEXTS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(5 + i % 4)) for i in range(24)]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def tiny_gpt2_config(tok, **overrides):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tok),
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=2,
        **overrides,
    )


def save_tiny_model(folder, tokenizer=True):
    from transformers import GPT2LMHeadModel

    tok = make_tokenizer()
    config = tiny_gpt2_config(tok, pad_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def lm_data(tmp_path):
    path = tmp_path / "lm.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


@pytest.fixture
def cls_data(tmp_path):
    path = tmp_path / "cls.csv"
    rows = [f"{t},{'pos' if 'good' in t else 'neg'}" for t in TEXTS]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def save_tiny_encoder(folder):
    """A tiny BERT (bidirectional attention), as BertModel.save_pretrained writes it."""
    from transformers import BertConfig, BertModel

    tok = make_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"))


def select(model, data, out, *extra, quiet=True):
    return main(
        [
            "select",
            "--model",
            str(model),
            "--data",
            str(data),
            "--budget",
            "0.5",
            "--steps",
            "6",
            "--lazy",
            "2",
            "--out",
            str(out),
            "--threads",
            "1",
            *(["--quiet"] if quiet else []),
            *extra,
        ]
    )


# -- select: happy paths ------------------------------------------------------------------------


def test_select_language_model(tiny_model, lm_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert select(tiny_model, lm_data, out) == 0
    printed = capsys.readouterr().out
    assert "selection at budget 0.5" in printed
    selection = Selection.load(out / "selection.json")
    assert set(selection.numel) == {"head", "norm", "bias", "embed", "others"}
    assert selection.groups and selection.fraction <= 0.5
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["task"] == "language-modelling" and results["examples"] == len(TEXTS)
    for name in ("ppi_heatmap.png", "appi_curves.png", "frontier.png"):
        assert_valid_png(out / name)


def test_select_reports_device_threads_probes_and_progress(tiny_model, lm_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert select(tiny_model, lm_data, out, "--device", "cpu", "--no-plots", quiet=False) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].endswith("; on cpu, 1 torch thread")
    assert torch.get_num_threads() == 1
    # not a terminal: the probe phase reports in plain lines, its first step and its last
    assert "  probe phase: 1/6 steps, loss " in printed
    assert "  probe phase: 6/6 steps, loss " in printed
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["threads"] == 1 and results["run"]["device"] == "cpu"
    counts = expected_probe_counts(results["history"])
    rows = table_rows(printed, "group   valued")
    assert {r[0]: (r[1], r[2]) for r in rows} == {g: (f"{v}/{n}", f"{a}/{n}") for g, (n, v, a) in counts.items()}
    for row in results["probes"]:
        assert (row["probes"], row["valued"], row["accepted"]) == counts[row["group"]]
        rejected = [r for r in results["history"] if r["group"] == row["group"] and not r["accepted"]]
        assert sum(row["reasons"].values()) == len(rejected)
    assert "next: train it" in printed and "Selection.load(" in printed


def test_select_with_one_probe_warns_that_ranks_are_unreliable(tiny_model, lm_data, tmp_path, capsys):
    # 2 steps, a probe every 4: one probe per group, too few to rank groups by
    args = ("--steps", "2", "--lazy", "4", "--no-plots")
    assert (
        main(
            [
                "select",
                "--model",
                str(tiny_model),
                "--data",
                str(lm_data),
                "--budget",
                "0.5",
                "--out",
                str(tmp_path / "out"),
                "--threads",
                "1",
                "--quiet",
                *args,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "selection at budget 0.5" in captured.out
    (warning,) = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning.startswith("adapeft select: warning: APPI ranks rest on fewer than 3 valued")
    assert "run more --steps" in warning
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["warnings"] == [warning.removeprefix("adapeft select: warning: ")]
    groups = {r["group"] for r in results["history"]}
    assert all(f"{g} 1/1" in warning or f"{g} 0/1" in warning for g in groups)


def test_select_classification_with_lora(tiny_model, cls_data, tmp_path):
    out = tmp_path / "out"
    assert select(tiny_model, cls_data, out, "--lora", "--no-plots") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["task"] == "classification" and results["model"]["classes"] == [
        "neg",
        "pos",
    ]
    selection = Selection.load(out / "selection.json")
    assert set(selection.numel) == set(T.ALL_GROUPS)
    # The classifier (score) is the head: 2 classes x width 32, LoRA left it alone.
    assert selection.numel["head"] == 2 * 32
    assert not list(out.glob("*.png"))
    run = json.loads((out / "selection.json").read_text())["run"]
    assert run["task"] == "sequence-classification" and run["classes"] == ["neg", "pos"]


def test_select_encoder_classification(tiny_encoder, cls_data, tmp_path):
    out = tmp_path / "out"
    assert select(tiny_encoder, cls_data, out, "--no-plots", "--label-column", "label") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["class"] == "BertForSequenceClassification"
    assert Selection.load(out / "selection.json").groups


def what_next_blocks() -> list[str]:
    section = README.read_text().split("### What next", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_lora_selection_rebuilds_as_the_readme_says(tiny_model, lm_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert select(tiny_model, lm_data, out, "--lora", "--budget", "0.3", "--no-plots") == 0
    saved = json.loads((out / "selection.json").read_text())
    assert saved["run"]["base_model"] == str(Path(tiny_model).resolve())
    assert saved["run"]["task"] == "causal-lm" and saved["budget"] == 0.3
    assert saved["method"] == "greedy"
    lora = saved["lora"]
    assert lora["r"] == 8 and lora["lora_alpha"] == 16 and lora["fan_in_fan_out"] is True
    assert lora["target_modules"] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]
    sel = Selection.load(out / "selection.json")
    assert "others" not in sel.groups  # 65% of the parameters: over the budget

    rebuild, train = what_next_blocks()
    code = rebuild.replace("adapeft_out/selection.json", str(out / "selection.json"))
    code = code.replace("path/to/hf_model_dir", str(tiny_model))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    model = scope["model"]
    # the adapters of the run: the same modules, the same rank, hence the same group sizes
    from adapeft_optim import group_parameters

    rebuilt = group_parameters(model, include_frozen=True)
    for g in ("lora_A", "lora_B"):
        assert sum(p.numel() for p in rebuilt[g]) == sel.numel[g], g
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sel.num_selected

    # ... and the training block runs as written on it
    from transformers import Trainer, TrainingArguments

    monkeypatch.chdir(tmp_path)
    ids = torch.arange(16).reshape(4, 4) % 12 + 3
    scope |= {
        "Trainer": Trainer,
        "args": TrainingArguments(
            output_dir=str(tmp_path / "trainer"),
            max_steps=2,
            per_device_train_batch_size=2,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            logging_steps=1,
        ),
        "ds": [{"input_ids": row, "labels": row} for row in ids],
    }
    exec(compile(train, "README.md", "exec"), scope)
    assert scope["trainer"].state.global_step == 2
    assert (tmp_path / "trained" / "adapter_config.json").is_file()


# -- select: errors -----------------------------------------------------------------------------


def test_select_missing_model_folder(lm_data, tmp_path, capsys):
    assert select(tmp_path / "nope", lm_data, tmp_path / "out") == 2
    assert "model folder" in (err := one_line_error(capsys)) and "does not exist" in err


def test_select_folder_without_config(lm_data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert select(tmp_path / "empty", lm_data, tmp_path / "out") == 2
    assert "has no config.json" in (err := one_line_error(capsys)) and "save_pretrained" in err


def test_select_unknown_model_type(lm_data, tmp_path, capsys):
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    assert select(folder, lm_data, tmp_path / "out") == 2
    assert "unknown model type 'no-such-model'" in one_line_error(capsys)


def test_select_folder_without_tokenizer(lm_data, tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "notok", tokenizer=False)
    capsys.readouterr()  # save_pretrained's progress bar
    assert select(folder, lm_data, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "has no tokenizer" in err and "tokenizer.save_pretrained" in err


def test_select_missing_data_file(tiny_model, tmp_path, capsys):
    assert select(tiny_model, tmp_path / "missing.jsonl", tmp_path / "out") == 2
    assert "does not exist" in one_line_error(capsys)


def test_select_bad_json_line_names_the_line(tiny_model, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "good movie"}\n\n{"text": "bad plot"\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert f"{data}:3: not valid JSON" in one_line_error(capsys)


def test_select_json_line_not_an_object(tiny_model, tmp_path, capsys):
    data = tmp_path / "list.jsonl"
    data.write_text('["good movie"]\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert f"{data}:1: expected a JSON object" in one_line_error(capsys)


def test_select_json_without_text_field(tiny_model, tmp_path, capsys):
    data = tmp_path / "notext.jsonl"
    data.write_text('{"sentence": "good movie"}\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "no 'text' field (fields: 'sentence')" in (err := one_line_error(capsys)) and "--text-column" in err


def test_select_csv_without_the_column(tiny_model, tmp_path, capsys):
    data = tmp_path / "cols.csv"
    data.write_text("sentence,label\ngood movie,1\n")
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "no 'text' column (columns: sentence, label)" in one_line_error(capsys)


def test_select_csv_without_the_named_label_column(tiny_model, cls_data, tmp_path, capsys):
    assert select(tiny_model, cls_data, tmp_path / "out", "--label-column", "sentiment") == 2
    err = one_line_error(capsys)
    assert "no 'sentiment' column (columns: text, label)" in err and "--label-column" in err


def test_select_jsonl_without_the_named_label_field(tiny_model, tmp_path, capsys):
    data = tmp_path / "cls.jsonl"
    data.write_text('{"text": "good movie", "label": 1}\n{"text": "bad plot", "label": 0}\n')
    assert select(tiny_model, data, tmp_path / "out", "--label-column", "sentiment") == 2
    err = one_line_error(capsys)
    assert f"{data}:1: no 'sentiment' field (fields: 'text', 'label')" in err
    assert "--label-column" in err


def test_select_csv_unterminated_quote_names_the_line_it_opens(tiny_model, tmp_path, capsys):
    data = tmp_path / "quote.csv"
    data.write_text('text,label\ngood movie,1\n"bad plot,0\nfine film,1\nthe end,0\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert f"{data}:3: a quoted field opened on this line is never closed" in err
    assert "the file ends at line 5" in err and "closing quote" in err


def test_select_csv_quoted_newlines_count_from_the_record_start(tiny_model, tmp_path, capsys):
    # a legal quoted field spanning two lines, then a row with too many fields on line 4
    data = tmp_path / "multi.csv"
    data.write_text('text,label\n"good\nmovie",1\nbad,plot,0\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert f"{data}:4: 3 fields, more than the header's 2" in one_line_error(capsys)


def test_select_encoder_on_text_alone(tiny_encoder, lm_data, tmp_path, capsys):
    assert select(tiny_encoder, lm_data, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "holds a 'bert' model whose attention is bidirectional" in err
    assert "give --label-column LABEL" in err and "use a causal language model" in err
    assert not (tmp_path / "out" / "selection.json").exists()


def test_select_causal_lm_without_its_head(lm_data, tmp_path, capsys):
    from transformers import GPT2Model

    folder = tmp_path / "headless"
    tok = make_tokenizer()
    GPT2Model(tiny_gpt2_config(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    capsys.readouterr()
    assert select(folder, lm_data, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "no weights for the language-model head (lm_head.weight)" in err
    assert "save the model with its head" in err


def test_select_cuda_that_is_not_there(tiny_model, lm_data, tmp_path, capsys):
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        assert select(tiny_model, lm_data, tmp_path / "out", "--device", f"cuda:{count}") == 2
        assert f"there {'is' if count == 1 else 'are'} {count} CUDA" in one_line_error(capsys)
        return
    assert select(tiny_model, lm_data, tmp_path / "out", "--device", "cuda") == 2
    err = one_line_error(capsys)
    assert err.startswith("adapeft select: error: --device cuda: ")
    assert "use --device cpu (or auto)" in err


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"], ids=["empty", "blank", "header-only"])
def test_select_empty_data(tiny_model, tmp_path, capsys, content):
    data = tmp_path / ("empty.csv" if "label" in content else "empty.jsonl")
    data.write_text(content)
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "holds no examples" in one_line_error(capsys)


def test_select_unknown_data_format(tiny_model, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("good movie\n")
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "unknown format .txt" in one_line_error(capsys)


def test_select_data_not_utf8(tiny_model, tmp_path, capsys):
    data = tmp_path / "latin.jsonl"
    data.write_bytes(b'{"text": "caf\xe9"}\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "is not UTF-8 text" in one_line_error(capsys)


def test_select_label_on_some_lines_only(tiny_model, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"text": "good movie"}\n{"text": "bad plot", "label": 0}\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert f"{data}:2: has a 'label'" in one_line_error(capsys)


def test_select_single_class(tiny_model, tmp_path, capsys):
    data = tmp_path / "one.jsonl"
    data.write_text('{"text": "good movie", "label": 1}\n{"text": "bad plot", "label": 1}\n')
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "classification needs 2 or more classes" in one_line_error(capsys)


def test_select_requires_budget(tiny_model, lm_data, capsys):
    assert main(["select", "--model", str(tiny_model), "--data", str(lm_data)]) == 2
    assert "--budget" in capsys.readouterr().err
