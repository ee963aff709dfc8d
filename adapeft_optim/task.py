"""The embedded task of ``adapeft demo`` under its old name: the synthetic corpus and GPT-2
builders live in :mod:`adapeft_optim.demo.task`, training, evaluation and the pre-training cache
in :mod:`adapeft_optim.demo.training`, progress display in :mod:`adapeft_optim.progress`.
Every name is re-exported here, so ``from adapeft_optim import task`` keeps working::

    from adapeft_optim import task
    small = task.add_lora(task.pretrained_model("small"), seed=0)
    opt = task.probe(small, task.FINETUNE_TASK, steps=20, lazy=2, seed=0)   # warm-up
    large = task.add_lora(task.pretrained_model("large"), seed=0)
    result = task.train(large, task.FINETUNE_TASK, steps=200, groups=opt.select(0.05), seed=0)
"""

from __future__ import annotations

from .demo.task import (
    ALL_GROUPS,
    ANSWER_LENGTH,
    BATCH_SIZE,
    BOS,
    EOS,
    EVAL_SIZE,
    FINETUNE_TASK,
    FULL_LR,
    LORA_RANK,
    LORA_TARGETS,
    N_POSITIONS,
    N_SYMBOLS,
    PAD,
    PEFT_LR,
    PRETRAIN_BATCH,
    PRETRAIN_LR,
    PRETRAIN_STEPS,
    PRETRAIN_TASK,
    PROBE_LR,
    RECIPES,
    SEP,
    SEQ_LEN,
    SIZES,
    VOCAB_SIZE,
    SyntheticTask,
    add_lora,
    build_model,
    count_parameters,
    model_config,
    parse_size,
    recipe_lr,
)
from .demo.training import CACHE_ENV, cache_dir, evaluate, pretrain, pretrained_model, probe, train
from .progress import LineProgress, Progress

__all__ = [
    "ALL_GROUPS",
    "ANSWER_LENGTH",
    "BATCH_SIZE",
    "BOS",
    "CACHE_ENV",
    "EOS",
    "EVAL_SIZE",
    "FINETUNE_TASK",
    "FULL_LR",
    "LORA_RANK",
    "LORA_TARGETS",
    "LineProgress",
    "N_POSITIONS",
    "N_SYMBOLS",
    "PAD",
    "PEFT_LR",
    "PRETRAIN_BATCH",
    "PRETRAIN_LR",
    "PRETRAIN_STEPS",
    "PRETRAIN_TASK",
    "PROBE_LR",
    "Progress",
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
