"""The embedded default task of ``adapeft demo``: a synthetic corpus, GPT-2 builders and
training/evaluation helpers, small enough to run Algorithm 2 on two CPU cores in minutes.

The corpus
----------
Every sequence is ``[BOS] x_1 .. x_K [SEP] y_1 .. y_K`` (``K = 8``, 18 tokens):

- the *prompt* ``x`` is a Markov chain over ``S = 60`` symbols with a fixed random transition
  matrix (peaked rows: a learnable, non-trivial language model);
- the *answer* is the prompt mapped symbol by symbol through a fixed permutation,
  ``y_i = sigma(x_i)``: every answer token is deterministic given the prompt, so next-token
  accuracy on the answer positions is a clean classification-like metric.

A :class:`SyntheticTask` is fixed by two seeds (transition matrix, permutation); its sampling is
driven by an explicit ``torch.Generator``, so a seed gives the same batches on every machine.
Two tasks are built in:

- :data:`PRETRAIN_TASK` ("A"): the loss is on every token, so the model learns the prompt's
  Markov chain and the copy-through-``sigma_A`` circuit;
- :data:`FINETUNE_TASK` ("B"): a different Markov chain and a different permutation
  ``sigma_B``, loss on the answer only (the prompt is masked like an instruction). Fine-tuning
  must re-map the copied symbols: the pre-trained model scores ~chance on it, and how fast a
  recipe adapts depends on which parameters it may change (the head can re-map the output
  vocabulary alone, LayerNorm or bias tuning cannot do much).

The models
----------
GPT-2 from :class:`transformers.GPT2Config` with an *untied* output layer
(``tie_word_embeddings=False``, so ``head`` is a group of its own: linear probing has
something to train), no dropout, ``vocab_size = 64``, ``n_positions = 32``. Sizes
(:data:`SIZES`, or ``"LxD"`` for ``L`` layers of width ``D``): ``tiny`` 1x32, ``small`` 2x64
(~0.1M parameters), ``large`` 4x128 (~0.8M, the "4x larger" model of the transfer), ``xl``
6x192. :func:`pretrained_model` pre-trains a size on task A once (``PRETRAIN_STEPS`` AdamW
steps, lr 3e-3) and caches the weights as safetensors under :func:`cache_dir`. :func:`add_lora`
wraps a model with peft LoRA (rank 4, alpha 8 = 2 x rank, on ``c_attn``, ``c_proj``,
``c_fc``), so it has the seven groups of the paper: ``lora_A, lora_B, head, norm, bias, embed,
others``.

Learning rates (AdamW, no weight decay, constant), chosen so every recipe learns within a few
hundred steps:

- :data:`PEFT_LR` = 3e-3 for parameter-efficient subsets (LoRA, LoRA-FA, BitFit, LayerNorm,
  linear probing, an AdaPEFT selection without ``others``);
- :data:`FULL_LR` = 1e-3 when the trained subset holds the big weight matrices (``others``:
  full fine-tuning), where 3e-3 is unstable;
- :data:`PROBE_LR` = 1e-3: the base lr of the probing warm-up; GeNAdaPEFT then sets a Newton
  lr per group.

Reuse (e.g. in a benchmark)::

    from adapeft_optim import task
    small = task.add_lora(task.pretrained_model("small"), seed=0)
    opt = task.probe(small, task.FINETUNE_TASK, steps=20, lazy=2, seed=0)   # warm-up
    large = task.add_lora(task.pretrained_model("large"), seed=0)
    result = task.train(large, task.FINETUNE_TASK, steps=200, groups=opt.select(0.05), seed=0)
    result["loss"], result["accuracy"], result["fraction"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

__all__ = [
    "ALL_GROUPS",
    "ANSWER_LENGTH",
    "BOS",
    "CACHE_ENV",
    "EVAL_SIZE",
    "FINETUNE_TASK",
    "FULL_LR",
    "LineProgress",
    "N_SYMBOLS",
    "PEFT_LR",
    "PRETRAIN_STEPS",
    "PRETRAIN_TASK",
    "PROBE_LR",
    "RECIPES",
    "SEP",
    "SEQ_LEN",
    "SIZES",
    "SyntheticTask",
    "VOCAB_SIZE",
    "add_lora",
    "build_model",
    "cache_dir",
    "count_parameters",
    "evaluate",
    "model_config",
    "parse_size",
    "pretrain",
    "pretrained_model",
    "probe",
    "recipe_lr",
    "train",
]

# -- the corpus ---------------------------------------------------------------------------------

BOS, SEP, EOS, PAD = 0, 1, 2, 3
_N_SPECIAL = 4
VOCAB_SIZE = 64
N_SYMBOLS = VOCAB_SIZE - _N_SPECIAL  # 60 symbols, token ids 4..63
ANSWER_LENGTH = 8  # K
SEQ_LEN = 2 * ANSWER_LENGTH + 2  # [BOS] x_1..x_K [SEP] y_1..y_K
N_POSITIONS = 32
EVAL_SIZE = 256  # sequences in the fixed evaluation set of a task

# Bumped whenever the corpus, the model builder or the pre-training recipe changes, so stale
# cached weights are never reused.
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """A deterministic synthetic sequence task (see the module docstring).

    Args:
        name (str): a label for tables and cache keys.
        chain_seed (int): seed of the prompt's Markov transition matrix.
        map_seed (int): seed of the answer permutation ``sigma``.
        loss_on (str): ``"all"`` tokens (language-model pre-training) or ``"answer"`` only
            (the prompt is masked with -100) (default: "answer")
        temperature (float): scale of the transition logits; larger is more peaked, i.e. a
            more predictable prompt (default: 2.5)
        eval_seed (int): seed of the fixed evaluation set, independent of training seeds
            (default: 10_000)
    """

    name: str
    chain_seed: int
    map_seed: int
    loss_on: str = "answer"
    temperature: float = 2.5
    eval_seed: int = 10_000

    def __post_init__(self) -> None:
        if self.loss_on not in ("all", "answer"):
            raise ValueError(f"Invalid loss_on: {self.loss_on!r}; use 'all' or 'answer'")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"Invalid temperature: {self.temperature}; use a finite value > 0")

    @property
    def transitions(self) -> torch.Tensor:
        """Row-stochastic ``(N_SYMBOLS, N_SYMBOLS)`` transition matrix of the prompt."""
        g = torch.Generator().manual_seed(self.chain_seed)
        logits = torch.randn(N_SYMBOLS, N_SYMBOLS, generator=g, dtype=torch.float64)
        return torch.softmax(self.temperature * logits, dim=-1)

    @property
    def symbol_map(self) -> torch.Tensor:
        """The permutation ``sigma`` of the symbols (``y_i = sigma[x_i]``), ``(N_SYMBOLS,)``."""
        g = torch.Generator().manual_seed(self.map_seed)
        return torch.randperm(N_SYMBOLS, generator=g)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences of token ids, shape ``(n, SEQ_LEN)``, int64."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Invalid n: {n!r}; use an int >= 1")
        probs = self.transitions
        x = torch.empty(n, ANSWER_LENGTH, dtype=torch.long)
        x[:, 0] = torch.randint(N_SYMBOLS, (n,), generator=generator)
        for i in range(1, ANSWER_LENGTH):
            x[:, i] = torch.multinomial(probs[x[:, i - 1]], 1, generator=generator).squeeze(1)
        y = self.symbol_map[x]
        bos = torch.full((n, 1), BOS, dtype=torch.long)
        sep = torch.full((n, 1), SEP, dtype=torch.long)
        return torch.cat([bos, x + _N_SPECIAL, sep, y + _N_SPECIAL], dim=1)

    def batch(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A training batch ``{"input_ids", "labels"}`` for a causal LM (labels -100 where the
        loss is masked: the prompt when ``loss_on="answer"``)."""
        ids = self.sample(n, generator)
        labels = ids.clone()
        if self.loss_on == "answer":
            labels[:, : ANSWER_LENGTH + 2] = -100
        return {"input_ids": ids, "labels": labels}

    def eval_batch(self, n: int = EVAL_SIZE) -> dict[str, torch.Tensor]:
        """The task's fixed evaluation set (the same for every training seed)."""
        return self.batch(n, torch.Generator().manual_seed(self.eval_seed))

    def key(self) -> str:
        """A short stable identifier of the task definition (for cache file names)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


PRETRAIN_TASK = SyntheticTask("A (pre-train)", chain_seed=101, map_seed=102, loss_on="all")
FINETUNE_TASK = SyntheticTask("B (fine-tune)", chain_seed=201, map_seed=202, loss_on="answer")

# -- the models ---------------------------------------------------------------------------------

# name -> (n_layer, n_embd, n_head)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 32, 2),
    "small": (2, 64, 2),
    "large": (4, 128, 4),
    "xl": (6, 192, 6),
}

ALL_GROUPS = ("lora_A", "lora_B", "head", "norm", "bias", "embed", "others")

# Fixed PEFT recipes, by group name (what apply_selection makes trainable).
RECIPES: dict[str, tuple[str, ...]] = {
    "LoRA": ("lora_A", "lora_B"),
    "LoRA-FA": ("lora_B",),
    "BitFit": ("bias",),
    "LayerNorm": ("norm",),
    "linear probing": ("head",),
    "full fine-tuning": ("head", "norm", "bias", "embed", "others"),
}

PEFT_LR = 3e-3
FULL_LR = 1e-3
PROBE_LR = 1e-3
PRETRAIN_LR = 3e-3
PRETRAIN_STEPS = 200
PRETRAIN_BATCH = 32
BATCH_SIZE = 16
LORA_RANK = 4
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
CACHE_ENV = "ADAPEFT_CACHE"


def parse_size(spec: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """``(n_layer, n_embd, n_head)`` of a size name in :data:`SIZES` or ``"LxD"`` (``"3x96"``:
    3 layers of width 96, one head per 32 channels)."""
    if isinstance(spec, tuple):
        sizes = spec
    elif isinstance(spec, str) and spec in SIZES:
        sizes = SIZES[spec]
    else:
        layers, _, width = str(spec).partition("x")
        if not (layers.isdigit() and width.isdigit()):
            raise ValueError(
                f"Invalid model size {spec!r}; use one of {', '.join(SIZES)} or 'LxD' (layers x width, e.g. '3x96')"
            )
        sizes = (int(layers), int(width), max(1, int(width) // 32))
    n_layer, n_embd, n_head = sizes
    if n_layer < 1 or n_embd < 1 or n_head < 1 or n_embd % n_head:
        raise ValueError(
            f"Invalid model size {spec!r}: need layers >= 1 and a width divisible by the number of heads ({n_head})"
        )
    return n_layer, n_embd, n_head


def model_config(size: str | tuple[int, int, int]):
    """The :class:`transformers.GPT2Config` of a size (untied head, no dropout)."""
    from transformers import GPT2Config

    n_layer, n_embd, n_head = parse_size(size)
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=N_POSITIONS,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )


def build_model(size: str | tuple[int, int, int] = "small", *, seed: int = 0) -> nn.Module:
    """A randomly initialised GPT-2 of ``size`` (seeded: the same weights for the same seed)."""
    from transformers import GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(model_config(size))
    # transformers reads the loss from this attribute and warns when it is unset.
    model.loss_type = "ForCausalLM"
    return model


def add_lora(model: nn.Module, *, seed: int = 0, rank: int = LORA_RANK, train_all: bool = True):
    """Wrap ``model`` with peft LoRA (``rank``, alpha ``2 * rank``, on c_attn/c_proj/c_fc).

    peft changes ``model`` in place: deep-copy it first to keep the original.

    The adapters are initialised from ``seed`` (``lora_B`` is zero, so the wrapped model
    computes what ``model`` did). With ``train_all`` every parameter, base weights included,
    requires grad (the full fine-tuning + LoRA of Algorithm 2's probing phase); otherwise peft's
    default (adapters only). Use :func:`~adapeft_optim.selection.apply_selection` to choose.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,  # scaling alpha / r = 2 at every rank
        target_modules=list(LORA_TARGETS),
        lora_dropout=0.0,
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights as (in, out)
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft calls a transformers property that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    if train_all:
        for p in peft_model.parameters():
            p.requires_grad_(True)
    return peft_model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (each tensor once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# -- cache ----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where pre-trained weights are cached: ``$ADAPEFT_CACHE`` if set, else
    ``$XDG_CACHE_HOME/adapeft_optim``, else ``~/.cache/adapeft_optim``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adapeft_optim"


def _cache_file(size: tuple[int, int, int], steps: int, task: SyntheticTask) -> Path:
    n_layer, n_embd, n_head = size
    name = f"gpt2-{n_layer}x{n_embd}h{n_head}-{task.key()}-s{steps}-v{_FORMAT_VERSION}.safetensors"
    return cache_dir() / "pretrained" / name


# -- training and evaluation --------------------------------------------------------------------


# What the ``progress`` argument of train/probe/pretrain takes: a description for a tqdm bar, a
# factory ``total -> bar`` (e.g. ``functools.partial(LineProgress, desc=...)``), or None.
Progress = str | Callable[[int], Any] | None


def _progress(total: int, desc: Progress):
    """A tqdm bar for a description, the factory's bar, or a no-op stand-in for None."""
    if desc is None:
        return _NoBar()
    if callable(desc):
        return desc(total)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


class LineProgress:
    """Progress as whole lines, for logs and pipes where a tqdm bar would be one long line
    of carriage returns: the first step (so the speed shows early), every tenth of the steps
    and the last, e.g. ``  warm-up (probes): 4/8 steps, loss 3.214 (1.9s)``.

    Args:
        total (int): steps of the phase.
        desc (str): name of the phase.
        stream (TextIO, optional): where the lines go (default: sys.stdout)
        every (float): fraction of the steps between lines (default: 0.1)
    """

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, every: float = 0.1) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.every = max(1, math.ceil(every * total))
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n == 1 or self.n >= self.total or self.n // self.every > before // self.every:
            elapsed = time.perf_counter() - self.start
            print(
                f"  {self.desc}: {self.n}/{self.total} steps{self.postfix} ({elapsed:.1f}s)",
                file=self.stream or sys.stdout,
                flush=True,
            )

    def close(self) -> None:
        pass


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


@torch.no_grad()
def evaluate(model: nn.Module, task: SyntheticTask = FINETUNE_TASK, batch: Mapping | None = None) -> dict:
    """Answer-token cross-entropy and accuracy of ``model`` on ``task``'s evaluation set.

    Returns:
        dict: ``{"loss": float, "accuracy": float}``; ``loss`` is the mean cross-entropy of the
        ``K`` answer tokens (0 for a perfect model, ``log 64 = 4.16`` for a uniform guess),
        ``accuracy`` the fraction of answer tokens predicted exactly (argmax).
    """
    batch = task.eval_batch() if batch is None else batch
    was_training = model.training
    model.eval()
    try:
        ids = batch["input_ids"]
        logits = model(input_ids=ids).logits[:, ANSWER_LENGTH + 1 : -1].float()
        target = ids[:, ANSWER_LENGTH + 2 :]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        accuracy = (logits.argmax(-1) == target).float().mean()
    finally:
        model.train(was_training)
    return {"loss": float(loss), "accuracy": float(accuracy)}


def recipe_lr(groups: Iterable[str]) -> float:
    """The AdamW lr used for a trainable subset: :data:`FULL_LR` when it holds the big weight
    matrices (``others``), else :data:`PEFT_LR`."""
    from .grouping import base_name

    return FULL_LR if any(base_name(g) == "others" for g in groups) else PEFT_LR


def train(
    model: nn.Module,
    task: SyntheticTask,
    steps: int,
    *,
    groups: Any = None,
    lr: float | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    progress: Progress = None,
    eval_batch: Mapping | None = None,
) -> dict:
    """Train ``model`` on ``task`` with plain AdamW and evaluate it.

    Args:
        model (nn.Module): the model (a LoRA model from :func:`add_lora` to train LoRA groups).
        task (SyntheticTask): what to train on.
        steps (int): optimizer steps.
        groups (Selection or iterable of group names, optional): the groups to train;
            :func:`~adapeft_optim.selection.apply_selection` makes exactly those trainable
            (a recipe of :data:`RECIPES`, an ``opt.select(...)`` result). ``None`` trains the
            parameters that already require grad (default: None)
        lr (float, optional): AdamW learning rate; ``None`` takes :func:`recipe_lr` of the
            trained groups (default: None)
        batch_size (int): sequences per step (default: 16)
        seed (int): seed of the batch stream; the same seed gives the same batches, so
            recipes compared with one seed see the same data (default: 0)
        progress (str or callable, optional): description of a tqdm bar, or a factory
            ``total -> bar`` such as ``functools.partial(LineProgress, desc=...)``; ``None``
            for no progress (default: None)
        eval_batch (Mapping, optional): evaluation set; ``None`` for ``task.eval_batch()``
            (default: None)

    Returns:
        dict: ``loss`` and ``accuracy`` (final, on the evaluation set, as :func:`evaluate`),
        ``train_loss`` (mean of the last 10 steps' losses), ``trainable``, ``total``,
        ``fraction`` (trainable / total parameters), ``lr``, ``steps``, ``groups``.
    """
    from .grouping import group_parameters
    from .selection import apply_selection

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid steps: {steps!r}; use an int >= 0")
    if groups is not None:
        chosen = apply_selection(model, groups)
        names = list(chosen)
    else:
        names = list(group_parameters(model))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad; pass groups=")
    lr = recipe_lr(names) if lr is None else float(lr)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    bar = _progress(steps, progress)
    try:
        for _ in range(steps):
            loss = model(**task.batch(batch_size, generator)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update()
    finally:
        bar.close()
    trainable, total = count_parameters(model)
    tail = losses[-10:]
    return {
        **evaluate(model, task, eval_batch),
        "train_loss": sum(tail) / len(tail) if tail else math.nan,
        "trainable": trainable,
        "total": total,
        "fraction": trainable / total,
        "lr": lr,
        "steps": steps,
        "groups": names,
    }


def probe(
    model: nn.Module,
    task: SyntheticTask,
    steps: int,
    *,
    lazy: int = 2,
    lr: float = PROBE_LR,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    progress: Progress = None,
    **kwargs: Any,
):
    """Algorithm 1 as a warm-up: train every trainable group of ``model`` with
    :class:`~adapeft_optim.optimizer.GeNAdaPEFT` (AdamW inside) for ``steps`` steps, probing
    every ``lazy`` steps.

    Args:
        model (nn.Module): e.g. ``add_lora(pretrained_model("small"))`` (all groups trainable).
        task (SyntheticTask): the task to fine-tune on.
        steps (int): warm-up steps (the paper: 10% of the fine-tuning horizon).
        lazy (int): probe every ``lazy`` steps (default: 2)
        lr (float): base lr of the inner AdamW, the starting point of the Newton lrs
            (default: 1e-3)
        batch_size (int): sequences per step (default: 16)
        seed (int): seed of the batch stream (default: 0)
        progress (str or callable, optional): as in :func:`train` (default: None)
        **kwargs: more :class:`GeNAdaPEFT` options (``scales``, ``r2_min``, ...).

    Returns:
        GeNAdaPEFT: the optimizer, with ``appi``, ``lrs``, ``numel``, ``history`` and
        ``select()``.
    """
    from .grouping import group_parameters
    from .optimizer import GeNAdaPEFT

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r}; use an int >= 1")
    groups = group_parameters(model)
    params = [p for ps in groups.values() for p in ps]
    inner = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    # One probe batch per probe, from a stream of its own: the batches the steps have not seen.
    probe_generator = torch.Generator().manual_seed(seed + 10_007)
    probe_batches = [task.batch(batch_size, probe_generator) for _ in range(-(-steps // lazy) if lazy else 0)]
    opt = GeNAdaPEFT(
        inner,
        closure=lambda batch: model(**batch).loss,
        probe_data=probe_batches or None,
        groups=groups,
        lazy=lazy,
        **kwargs,
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = _progress(steps, progress)
    try:
        for _ in range(steps):
            loss = model(**task.batch(batch_size, generator)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    finally:
        bar.close()
    return opt


def pretrain(
    size: str | tuple[int, int, int],
    *,
    steps: int = PRETRAIN_STEPS,
    task: SyntheticTask = PRETRAIN_TASK,
    seed: int = 0,
    progress: Progress = None,
) -> nn.Module:
    """A GPT-2 of ``size`` trained from scratch on ``task`` (no caching; see
    :func:`pretrained_model`)."""
    model = build_model(size, seed=seed)
    train(model, task, steps, lr=PRETRAIN_LR, batch_size=PRETRAIN_BATCH, seed=seed, progress=progress)
    model.eval()
    return model


def pretrained_model(
    size: str | tuple[int, int, int] = "small",
    *,
    steps: int = PRETRAIN_STEPS,
    cache: bool = True,
    progress: Progress = None,
) -> nn.Module:
    """A GPT-2 of ``size`` pre-trained on :data:`PRETRAIN_TASK`, from the cache when there.

    The first call trains it (seed 0, ``steps`` AdamW steps) and saves the weights as
    safetensors under ``cache_dir() / "pretrained"``; later calls load them. The cache key is
    the size, the steps, the task definition and a format version. An unreadable cache file is
    rebuilt; an unwritable cache folder only costs the speed-up (a warning).

    Returns:
        nn.Module: a ``GPT2LMHeadModel`` in eval mode; the same weights whether trained now or
        loaded (training goes through the file whenever caching works).
    """
    from safetensors.torch import load_model, save_model

    dims = parse_size(size)
    path = _cache_file(dims, steps, PRETRAIN_TASK)
    if cache and path.is_file():
        model = build_model(dims)
        try:
            load_model(model, os.fspath(path))
            return model.eval()
        except Exception as err:  # a truncated or foreign file: rebuild it
            warnings.warn(
                f"ignoring unreadable cached weights {path} ({err}); pre-training again",
                RuntimeWarning,
                stacklevel=2,
            )
    model = pretrain(dims, steps=steps, progress=progress)
    if not cache:
        return model
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_model(model, os.fspath(tmp), metadata={"config": model.config.to_json_string()})
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except OSError as err:
        warnings.warn(
            f"could not cache pre-trained weights in {path.parent} ({err}); set {CACHE_ENV} to a "
            f"writable folder to make the next run quicker",
            RuntimeWarning,
            stacklevel=2,
        )
        return model
    # Reload, so that a fresh run and a cached run start from bit-identical weights.
    fresh = build_model(dims)
    load_model(fresh, os.fspath(path))
    return fresh.eval()
