"""Training, evaluation and the pre-training cache of the demo's task
(:mod:`adapeft_optim.demo.task`): :func:`train` (plain AdamW on a subset of groups),
:func:`probe` (the GeNAdaPEFT warm-up of Algorithm 2), :func:`evaluate`, and
:func:`pretrained_model`, which pre-trains a size on task A once (:data:`PRETRAIN_STEPS`
AdamW steps, lr 3e-3) and caches the weights as safetensors under :func:`cache_dir`. Every
loop here is :func:`~adapeft_optim.loop.run_steps`.

Reuse (e.g. in a benchmark)::

    from adapeft_optim import task
    small = task.add_lora(task.pretrained_model("small"), seed=0)
    opt = task.probe(small, task.FINETUNE_TASK, steps=20, lazy=2, seed=0)   # warm-up
    large = task.add_lora(task.pretrained_model("large"), seed=0)
    result = task.train(large, task.FINETUNE_TASK, steps=200, groups=opt.select(0.05), seed=0)
    result["loss"], result["accuracy"], result["fraction"]
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..grouping import group_parameters
from ..loop import run_steps
from ..optimizer import GeNAdaPEFT
from ..progress import Progress, progress_bar
from ..selection import apply_selection
from .task import (
    ANSWER_LENGTH,
    BATCH_SIZE,
    FINETUNE_TASK,
    PRETRAIN_BATCH,
    PRETRAIN_LR,
    PRETRAIN_STEPS,
    PRETRAIN_TASK,
    PROBE_LR,
    SyntheticTask,
    build_model,
    count_parameters,
    parse_size,
    recipe_lr,
)

__all__ = ["CACHE_ENV", "cache_dir", "evaluate", "pretrain", "pretrained_model", "probe", "train"]

CACHE_ENV = "ADAPEFT_CACHE"
# Bumped whenever the corpus, the model builder or the pre-training recipe changes, so stale
# cached weights are never reused.
_FORMAT_VERSION = 1

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
    batches = (task.batch(batch_size, generator) for _ in range(steps))
    losses = run_steps(model, opt, batches, steps, progress=progress_bar(steps, progress))
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
    batches = (task.batch(batch_size, generator) for _ in range(steps))
    run_steps(model, opt, batches, steps, progress=progress_bar(steps, progress))
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
