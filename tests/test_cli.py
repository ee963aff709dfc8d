"""Tests for the ``adapeft`` command line: ``demo`` with tiny settings (files, tables,
determinism) and ``select`` on a tiny model saved to a temporary folder (happy paths and
every input error: exit status 2 and one line on stderr)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from adapeft_optim import Selection
from adapeft_optim import task as T
from adapeft_optim.cli import main

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


def test_demo_budget_below_every_group(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), *TINY_DEMO, "--no-plots", "--budget", "0.0001"]
    assert main(args) == 2
    assert "selects no group" in one_line_error(capsys)


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
    tok.train_from_iterator(
        TEXTS, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def save_tiny_model(folder, tokenizer=True):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
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


def select(model, data, out, *extra):
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
            "--quiet",
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
    assert (
        "no 'text' field (fields: 'sentence')" in (err := one_line_error(capsys))
        and "--text-column" in err
    )


def test_select_csv_without_the_column(tiny_model, tmp_path, capsys):
    data = tmp_path / "cols.csv"
    data.write_text("sentence,label\ngood movie,1\n")
    assert select(tiny_model, data, tmp_path / "out") == 2
    assert "no 'text' column (columns: sentence, label)" in one_line_error(capsys)


def test_select_csv_without_the_named_label_column(tiny_model, cls_data, tmp_path, capsys):
    assert select(tiny_model, cls_data, tmp_path / "out", "--label-column", "sentiment") == 2
    assert "no 'sentiment' column" in one_line_error(capsys)


@pytest.mark.parametrize(
    "content", ["", "\n\n", "text,label\n"], ids=["empty", "blank", "header-only"]
)
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
