"""The pipeline of ``adapeft demo`` (:func:`run_demo`), one function per phase: pre-trained
models, warm-up with probes, the APPI tables, the selection, the recipes on the large model,
the comparison and the output files. The phases share a :class:`DemoRun`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

import torch

from ..progress import LineProgress, Progress
from ..report import (
    FewProbesWarning,
    appi_table,
    few_probes_message,
    format_probe_summary,
    json_safe,
    pct,
    probe_summary,
    select_or_explain,
)
from ..selection import Selection, pareto_frontier
from .config import DemoConfig, DemoError
from .figures import write_plots
from .tables import appi_text, comparison_text, frontier_text
from .task import (
    ANSWER_LENGTH,
    EVAL_SIZE,
    FINETUNE_TASK,
    FULL_LR,
    PEFT_LR,
    PRETRAIN_TASK,
    PROBE_LR,
    RECIPES,
    SEQ_LEN,
    VOCAB_SIZE,
    add_lora,
    count_parameters,
    parse_size,
    size_label,
)
from .training import cache_dir, evaluate, pretrained_model, probe, train

__all__ = ["DemoRun", "run_demo"]


@dataclasses.dataclass
class DemoRun:
    """One demo run: its settings, where its output goes, and what each phase leaves for the
    next (filled in phase by phase)."""

    config: DemoConfig
    out: Path
    stream: TextIO
    verbose: bool
    progress: bool | str
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)
    eval_batch: dict = dataclasses.field(default_factory=FINETUNE_TASK.eval_batch)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    clock: float = dataclasses.field(default_factory=time.perf_counter)
    bases: dict[str, Any] = dataclasses.field(default_factory=dict)  # role -> pre-trained model
    models_info: dict[str, dict] = dataclasses.field(default_factory=dict)
    small: Any = None  # the probed small model with LoRA
    opt: Any = None  # its GeNAdaPEFT after the warm-up
    summary: list[dict] = dataclasses.field(default_factory=list)  # probe_summary rows
    appi_rows: list[dict] = dataclasses.field(default_factory=list)
    frontier: list = dataclasses.field(default_factory=list)
    frontier_exact: list = dataclasses.field(default_factory=list)
    selection: Any = None
    comparison: list[dict] = dataclasses.field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A phase message or timing: printed only when verbose."""
        if self.verbose:
            self.say(text)

    def bar(self, desc: str) -> Progress:
        """The ``progress`` argument of a training phase named ``desc``."""
        if self.progress == "lines":
            return functools.partial(LineProgress, desc=desc, stream=self.stream)
        return desc if self.progress else None

    def lap(self, name: str) -> float:
        """Seconds since the last lap, recorded as ``name``."""
        now = time.perf_counter()
        self.timings[name] = now - self.clock
        self.clock = now
        return self.timings[name]


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    progress: bool | str = False,
    stream: TextIO | None = None,
    verbose: bool = True,
) -> dict:
    """Run the demo, write its files to ``out`` and return the ``results.json`` content.

    Args:
        out (str or Path): output folder (created).
        config (DemoConfig, optional): the settings (default: ``DemoConfig()``)
        progress (bool or str): ``True`` or ``"bar"``: tqdm bars on stderr; ``"lines"``: a
            line per tenth of each phase on ``stream`` (for logs and pipes); ``False``: none
            (default: False)
        stream (TextIO, optional): where tables and messages go (default: sys.stdout)
        verbose (bool): print phase messages and timings besides the tables (default: True)

    Raises:
        DemoError: a setting that cannot work, e.g. a budget below the most influential group.

    Warns:
        FewProbesWarning: a group has fewer than
        :data:`~adapeft_optim.report.MIN_VALUED_PROBES` valued probes.
    """
    if progress not in (True, False, "bar", "lines"):
        raise DemoError(f"Invalid progress: {progress!r}; use True/'bar', 'lines' or False")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(config or DemoConfig(), out, stream or sys.stdout, verbose, progress)
    _pretrained(run)
    _warm_up(run)
    _show_appi(run)
    _select(run)
    for name, groups in [("AdaPEFT", tuple(run.selection.groups)), *RECIPES.items()]:
        run.comparison.append(_train_recipe(run, name, groups))
    _show_comparison(run)
    return _write_files(run)


def _pretrained(run: DemoRun) -> None:
    """1. The small and the large pre-trained model, and how they do on tasks A and B."""
    config = run.config
    run.note(
        f"adapeft demo: Algorithm 2 on the synthetic task (small {size_label(config.small)} -> "
        f"large {size_label(config.large)}, {config.steps} steps, budget {pct(config.budget)}, "
        f"seed {config.seed}, {run.threads} torch thread{'s' if run.threads != 1 else ''})"
    )
    run.note(f"pre-trained weights cache: {cache_dir()}")
    for role in ("small", "large"):
        size = getattr(config, role)
        run.bases[role] = pretrained_model(size, steps=config.pretrain_steps, progress=run.bar(f"pre-train {role}"))
        run.note(f"  {role} model {size_label(size)}: ready in {run.lap('pretrain_' + role):.1f}s")
    for role, base in run.bases.items():
        run.models_info[role] = {
            "size": getattr(config, role),
            "layers_width_heads": list(parse_size(getattr(config, role))),
            "base_parameters": count_parameters(base)[1],
            "task_A": evaluate(base, PRETRAIN_TASK),
            "task_B_before": evaluate(base, FINETUNE_TASK, run.eval_batch),
        }


def _warm_up(run: DemoRun) -> None:
    """2. Warm-up with probes on the small model with LoRA, every group trainable."""
    config = run.config
    run.small = add_lora(copy.deepcopy(run.bases["small"]), seed=config.seed, train_all=True)
    warmup = config.warmup_steps
    run.opt = probe(
        run.small,
        FINETUNE_TASK,
        warmup,
        lazy=config.lazy,
        seed=config.seed,
        batch_size=config.batch_size,
        progress=run.bar("warm-up (probes)"),
    )
    probes, valued, accepted = _probe_counts(run.opt.history)
    run.note(
        f"warm-up: {warmup} steps on the small model with LoRA, every group trainable, probing "
        f"every {config.lazy} steps: {valued}/{probes} probes valued, {accepted} accepted "
        f"({run.lap('warmup'):.1f}s)"
    )
    if valued == 0:
        raise DemoError(
            f"no probe was valued in {warmup} warm-up steps, so there is no APPI to select from; "
            f"use more --steps (or --warmup) or a lower --lazy"
        )
    run.summary = probe_summary(run.opt.history, run.opt.appi)


def _probe_counts(history: list[dict]) -> tuple[int, int, int]:
    """``(probes, valued, accepted)`` of the probe records."""
    accepted = sum(1 for r in history if r["accepted"])
    valued = sum(1 for r in history if r["case"] is not None)
    return len(history), valued, accepted


def _show_appi(run: DemoRun) -> None:
    """3. The APPI table, what the probes came to and the greedy frontier."""
    appi, numel = run.opt.appi, run.opt.numel
    run.frontier = pareto_frontier(appi, numel, method="greedy")
    run.frontier_exact = pareto_frontier(appi, numel, method="exact")
    run.appi_rows = appi_table(run.opt)
    run.say()
    run.say("APPI after the warm-up (small model; value = APPI x params, the predicted loss reduction)")
    run.say(appi_text(run.appi_rows))
    run.say()
    run.say("probes per group (valued: counted in APPI; accepted: its lr fit was used)")
    run.say(format_probe_summary(run.summary))
    few = few_probes_message(run.summary, "use more --steps (or --warmup) or a lower --lazy for a ranking to trust")
    if few:
        warnings.warn(few, FewProbesWarning, stacklevel=3)  # at the caller of run_demo
    run.say()
    run.say("greedy frontier (nested prefixes by APPI; exact = also on the exact Pareto frontier)")
    run.say(frontier_text(run.frontier, run.frontier_exact))


def _select(run: DemoRun) -> None:
    """4. The selection at the budget, saved as ``selection.json``."""
    config, out = run.config, run.out
    selection, empty = select_or_explain(run.opt, config.budget, config.method)
    if not selection.groups:
        raise DemoError(f"--budget {config.budget:g} selects no group: {empty}")
    selection.save(out / "selection.json")
    run.say()
    run.say(
        f"selection at budget {pct(config.budget)} ({config.method}): "
        f"{'+'.join(selection.groups)} = {selection.num_selected:,} params, "
        f"{pct(selection.fraction)} of the small model -> {out / 'selection.json'}"
    )
    run.selection = selection


def _train_recipe(run: DemoRun, name: str, groups: tuple[str, ...]) -> dict:
    """5. ``groups`` trained on a fresh copy of the large model (the same batches for every
    recipe); its comparison row, with what the small model's APPI predicted for it."""
    config = run.config
    large = add_lora(copy.deepcopy(run.bases["large"]), seed=config.seed, train_all=False)
    result = train(
        large,
        FINETUNE_TASK,
        config.steps,
        groups=groups,
        seed=config.seed,
        batch_size=config.batch_size,
        progress=run.bar(f"{name} (large)"),
        eval_batch=run.eval_batch,
    )
    numel = run.opt.numel
    predicted = Selection.from_groups([g for g in groups if g in numel], numel, run.opt.appi)
    run.note(
        f"  trained {name} on the large model: loss {result['loss']:.4f}, accuracy "
        f"{result['accuracy']:.3f} ({run.lap('train_' + name):.1f}s)"
    )
    keys = ("trainable", "total", "fraction", "loss", "accuracy", "train_loss", "lr")
    return {
        "name": name,
        "groups": list(groups),
        **{key: result[key] for key in keys},
        "small_fraction": predicted.fraction,
        "predicted_value": predicted.value,
    }


def _show_comparison(run: DemoRun) -> None:
    """6. The comparison table, the lowest loss and the recipes that beat AdaPEFT."""
    comparison = run.comparison
    run.say()
    run.say(
        f"fine-tuning the large model ({size_label(run.config.large)}) on task B, {run.config.steps} "
        f"steps each, same batches (eval: {EVAL_SIZE} held-out sequences, answer tokens)"
    )
    run.say(comparison_text(comparison, run.models_info["large"]["task_B_before"]))
    best = min(comparison, key=lambda c: (c["loss"], c["fraction"]))
    dominated_by = [
        c["name"]
        for c in comparison[1:]
        if c["fraction"] <= comparison[0]["fraction"] and c["loss"] < comparison[0]["loss"]
    ]
    run.say(
        f"lowest eval loss: {best['name']}; recipes with fewer parameters and lower loss than "
        f"AdaPEFT: {', '.join(dominated_by) if dominated_by else 'none'}"
    )


def _write_files(run: DemoRun) -> dict:
    """7. The plots and ``results.json``; its content."""
    files = ["results.json", "selection.json"]
    if run.config.plots:
        files += write_plots(run.out, run.opt, run.frontier, run.comparison, run.selection, run.config.budget)
        run.note(f"plots written ({run.lap('plots'):.1f}s)")
    results = json_safe(_results(run, sorted(files)))
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    (run.out / "results.json").write_text(text, encoding="utf-8")
    run.note(f"wrote {', '.join(sorted(files))} to {run.out} (total {sum(run.timings.values()):.1f}s)")
    return results


def _results(run: DemoRun, files: list[str]) -> dict:
    """Every number of the tables, the probe history and the settings (not yet JSON-safe)."""
    config, opt = run.config, run.opt
    probes, valued, accepted = _probe_counts(opt.history)
    return {
        "config": dataclasses.asdict(config) | {"warmup_steps": config.warmup_steps, "threads": run.threads},
        "task": {
            "pretrain": dataclasses.asdict(PRETRAIN_TASK),
            "finetune": dataclasses.asdict(FINETUNE_TASK),
            "vocab_size": VOCAB_SIZE,
            "seq_len": SEQ_LEN,
            "answer_length": ANSWER_LENGTH,
            "eval_size": EVAL_SIZE,
        },
        "lrs": {"peft": PEFT_LR, "full": FULL_LR, "probe": PROBE_LR},
        "models": run.models_info,
        "warmup": {
            "steps": config.warmup_steps,
            "lazy": config.lazy,
            "probes": probes,
            "valued": valued,
            "accepted": accepted,
            "per_group": run.summary,
            "task_B_after": evaluate(run.small, FINETUNE_TASK, run.eval_batch),
        },
        "appi": run.appi_rows,
        "frontier": [_frontier_point(p) for p in run.frontier],
        "frontier_exact": [_frontier_point(p) for p in run.frontier_exact],
        "selection": run.selection.to_dict(),
        "comparison": run.comparison,
        "history": opt.history,
        "files": files,
    }


def _frontier_point(p: Any) -> dict:
    return {"fraction": p.fraction, "value": p.value, "groups": list(p.groups)}
