"""The embedded default task of ``adapeft demo``: a synthetic corpus and the GPT-2s trained
on it, small enough to run Algorithm 2 on two CPU cores in minutes. Training, evaluation and
the pre-training cache are in :mod:`adapeft_optim.demo.training`.

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
6x192. :func:`add_lora` wraps a model with peft LoRA (rank 4, alpha 8 = 2 x rank, on
``c_attn``, ``c_proj``, ``c_fc``), so it has the seven groups of the paper: ``lora_A, lora_B,
head, norm, bias, embed, others``.

Learning rates (AdamW, no weight decay, constant), chosen so every recipe learns within a few
hundred steps:

- :data:`PEFT_LR` = 3e-3 for parameter-efficient subsets (LoRA, LoRA-FA, BitFit, LayerNorm,
  linear probing, an AdaPEFT selection without ``others``);
- :data:`FULL_LR` = 1e-3 when the trained subset holds the big weight matrices (``others``:
  full fine-tuning), where 3e-3 is unstable;
- :data:`PROBE_LR` = 1e-3: the base lr of the probing warm-up; GeNAdaPEFT then sets a Newton
  lr per group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..grouping import base_name

__all__ = [
    "ALL_GROUPS",
    "ANSWER_LENGTH",
    "BATCH_SIZE",
    "BOS",
    "EOS",
    "EVAL_SIZE",
    "FINETUNE_TASK",
    "FULL_LR",
    "LORA_RANK",
    "LORA_TARGETS",
    "N_POSITIONS",
    "N_SYMBOLS",
    "PAD",
    "PEFT_LR",
    "PRETRAIN_BATCH",
    "PRETRAIN_LR",
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
    "count_parameters",
    "model_config",
    "parse_size",
    "recipe_lr",
    "size_label",
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


def recipe_lr(groups: Iterable[str]) -> float:
    """The AdamW lr used for a trainable subset: :data:`FULL_LR` when it holds the big weight
    matrices (``others``), else :data:`PEFT_LR`."""
    return FULL_LR if any(base_name(g) == "others" for g in groups) else PEFT_LR


def size_label(size: str | tuple[int, int, int]) -> str:
    """``"LxD"`` of a size (layers x width), e.g. ``"2x64"`` for ``"small"``."""
    n_layer, n_embd, _ = parse_size(size)
    return f"{n_layer}x{n_embd}"
