"""``adapeft select``: GeNAdaPEFT's probe phase on a local Hugging Face model and a JSONL/CSV
file, the APPI and frontier tables, ``selection.json``, ``results.json`` and plots.

The command is a sequence of steps over one :class:`SelectRun`: load the data and the model,
build the optimizer, run the probe phase (:func:`~adapeft_optim.loop.run_steps`), check the
probes, print the tables, select, write the outputs and print the next step.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..grouping import base_name, group_parameters
from ..loop import run_steps
from ..optimizer import GeNAdaPEFT
from ..progress import LineProgress
from ..report import FewProbesWarning, appi_table, few_probes_message, format_probe_summary, format_table, probe_summary
from ..selection import pareto_frontier
from .common import CLIError, output_folder, progress_mode, resolve_device, set_threads
from .data import label_ids, load_examples
from .models import add_lora, load_model, load_tokenizer

__all__ = ["SelectRun", "select_command"]


@dataclass
class SelectRun:
    """What the steps of ``adapeft select`` hand on to each other, filled in step by step."""

    args: argparse.Namespace
    texts: list[str]
    labels: list[int] | None  # class ids; None for language modelling
    classes: list[str] | None
    threads: int = 0
    device: Any = None  # torch.device
    model: Any = None
    tokenizer: Any = None
    out: Path = field(default_factory=Path)
    encoded: list[list[int]] = field(default_factory=list)  # token ids of the kept examples
    opt: GeNAdaPEFT | None = None
    summary: list[dict] = field(default_factory=list)  # probes per group
    frontier: list = field(default_factory=list)
    appi_rows: list[dict] = field(default_factory=list)
    few: str | None = None  # the too-few-probes warning
    selection: Any = None

    @property
    def classification(self) -> bool:
        return self.labels is not None


def select_command(args: argparse.Namespace) -> int:
    """Run ``adapeft select`` with the parsed options; returns the exit status."""
    run = _load_data(args)
    _load_model(run)
    _encode(run)
    train_batches = _build_optimizer(run)
    _probe_phase(run, train_batches)
    _check_probes(run)
    _print_tables(run)
    _select(run)
    _write_outputs(run)
    _print_selection(run)
    return 0


def _load_data(args: argparse.Namespace) -> SelectRun:
    """The examples and their class ids (classification needs two classes or more)."""
    texts, raw_labels = load_examples(args.data, args.text_column, args.label_column)
    labels, classes = label_ids(raw_labels) if raw_labels is not None else (None, None)
    if classes is not None and len(classes) < 2:
        raise CLIError(
            f"{args.data}: every example has the label {classes[0]!r}; classification needs 2 or more classes"
        )
    return SelectRun(args=args, texts=texts, labels=labels, classes=classes)


def _load_model(run: SelectRun) -> None:
    """Threads, device, the model and its tokenizer (checked against each other), --out."""
    args = run.args
    run.threads = set_threads(args.threads)
    run.device = resolve_device(args.device)
    run.model = load_model(args.model, run.classification, run.classes)
    run.tokenizer = load_tokenizer(args.model)
    vocab = run.model.get_input_embeddings().num_embeddings
    if len(run.tokenizer) > vocab:
        raise CLIError(
            f"the tokenizer in {args.model} has {len(run.tokenizer)} tokens but the model's embedding "
            f"holds {vocab}; save the tokenizer the model was trained with"
        )
    run.model.config.pad_token_id = run.tokenizer.pad_token_id
    run.out = output_folder(args.out)


def _encode(run: SelectRun) -> None:
    """Token ids of the texts, truncated; examples too short to train on are left out."""
    config = run.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    max_length = min(run.args.max_length, limit) if limit else run.args.max_length
    encoded = run.tokenizer(run.texts, truncation=True, max_length=max_length)["input_ids"]
    # A language-model example needs two tokens to predict one; a classifier needs one.
    shortest = 1 if run.classification else 2
    keep = [i for i, ids in enumerate(encoded) if len(ids) >= shortest]
    if not keep:
        raise CLIError(f"{run.args.data}: every text tokenizes to fewer than {shortest} tokens")
    run.encoded = [encoded[i] for i in keep]
    if run.classification:
        run.labels = [run.labels[i] for i in keep]


def _build_optimizer(run: SelectRun) -> Iterator[dict]:
    """LoRA (--lora), every parameter trainable, GeNAdaPEFT over AdamW; returns the training
    batches."""
    import torch

    args = run.args
    if args.lora:
        run.model = add_lora(run.model, args.model, args.lora_rank, args.seed)
    model = run.model
    model.to(run.device)
    for p in model.parameters():  # the probe phase trains everything (Algorithm 2, line 2)
        p.requires_grad_(True)
    groups = group_parameters(model, granularity=args.granularity)
    params = [p for ps in groups.values() for p in ps]
    # Probes evaluate a second stream over the data, not the batch of the gradient (unbiased slope).
    run.opt = GeNAdaPEFT(
        torch.optim.AdamW(params, lr=args.lr),
        closure=lambda batch: model(**batch).loss,
        probe_data=_batches(run, args.seed + 1),
        groups=groups,
        lazy=args.lazy,
    )
    return _batches(run, args.seed)


def _batches(run: SelectRun, seed: int) -> Iterator[dict]:
    """Endless shuffled batches of the data, in an order drawn from ``seed``."""
    import torch

    encoded, size = run.encoded, run.args.batch_size
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while True:
        idx = []
        while len(idx) < size:
            if not order:
                order = torch.randperm(len(encoded), generator=generator).tolist()
            idx.append(order.pop())
            if len(encoded) < size and not order:
                break  # a tiny file: one pass is the batch
        batch = run.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
        if run.classification:
            batch["labels"] = torch.tensor([run.labels[i] for i in idx])
        else:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        yield {k: v.to(run.device) for k, v in batch.items()}


def _probe_phase(run: SelectRun, train_batches: Iterator[dict]) -> None:
    """--steps optimizer steps (GeNAdaPEFT probes every --lazy), with a progress display."""
    args = run.args
    if not args.quiet:
        kind = f"classification ({len(run.classes)} classes)" if run.classification else "language modelling"
        print(
            f"adapeft select: {type(run.model).__name__} from {args.model}, {len(run.encoded)} examples, "
            f"{kind}; {args.steps} steps, probing every {args.lazy}; on {run.device}, {run.threads} "
            f"torch thread{'s' if run.threads != 1 else ''}",
            flush=True,
        )
    mode = progress_mode(args)
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=args.steps, desc="probe phase", leave=False)
    elif mode == "lines":
        bar = LineProgress(args.steps, "probe phase")
    else:
        bar = None
    run_steps(run.model, run.opt, train_batches, args.steps, progress=bar)


def _check_probes(run: SelectRun) -> None:
    """The probes per group; exit status 1 when no probe was valued."""
    run.summary = probe_summary(run.opt.history, run.opt.appi)
    if not any(r["valued"] for r in run.summary):
        reasons = sorted({str(r["reason"]) for r in run.opt.history})
        raise CLIError(
            f"no probe was valued in {run.args.steps} steps (reasons: "
            f"{', '.join(reasons) or 'no probe ran'}); "
            f"run more --steps, probe more often (--lazy), or try another --lr",
            code=1,
        )


def _print_tables(run: SelectRun) -> None:
    """The APPI table, the probes per group (warning when too few) and the greedy frontier."""
    opt = run.opt
    run.frontier = pareto_frontier(opt.appi, opt.numel, method="greedy")
    run.appi_rows = appi_table(opt)
    rows = [
        [
            r["rank"] or "-",
            r["group"],
            f"{r['numel']:,}",
            f"{100 * r['fraction']:.3g}%",
            f"{r['appi']:.4g}",
            f"{r['value']:.4g}",
            f"{r['lr']:.3g}",
        ]
        for r in run.appi_rows
    ]
    print(format_table(["rank", "group", "params", "% params", "APPI", "value", "Newton lr"], rows, "rlrrrrr"))
    print()
    print("probes per group (valued: counted in APPI; accepted: its lr fit was used)")
    print(format_probe_summary(run.summary))
    run.few = few_probes_message(
        run.summary,
        f"run more --steps (a probe every --lazy {run.args.lazy} steps) before trusting the selection",
    )
    if run.few:
        warnings.warn(run.few, FewProbesWarning, stacklevel=1)
    print()
    frontier_rows = [
        [k, "+".join(p.groups) or "(none)", f"{100 * p.fraction:.3g}%", f"{p.value:.4g}"]
        for k, p in enumerate(run.frontier)
    ]
    print(format_table(["k", "groups", "% params", "predicted value"], frontier_rows, "rlrr"))


def _select(run: SelectRun) -> None:
    """The selection at --budget with --method (an empty one is an error)."""
    from ..demo import select_or_explain

    args = run.args
    selection, empty = select_or_explain(run.opt, args.budget, args.method)
    if not selection.groups:
        raise CLIError(f"--budget {args.budget:g} selects no group: {empty}")
    run.selection = selection.with_lora(run.model) if args.lora else selection


def _write_outputs(run: SelectRun) -> None:
    """``selection.json``, the PNGs (unless --no-plots) and ``results.json`` in --out."""
    from ..demo import json_safe

    args, out, selection = run.args, run.out, run.selection
    record = _run_record(run)
    # The Selection's own fields (groups, budget, method, lora, ...) and how it was made;
    # Selection.load reads the former and ignores "run".
    (out / "selection.json").write_text(
        json.dumps(selection.to_dict() | {"run": record}, indent=2) + "\n", encoding="utf-8"
    )
    files = ["results.json", "selection.json"]
    if not args.no_plots:
        files += _write_plots(run)
    results = json_safe(
        {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "run": record,
            "model": {
                "class": type(run.model).__name__,
                "parameters": sum(run.opt.numel.values()),
                "task": "classification" if run.classification else "language-modelling",
                "classes": run.classes,
            },
            "examples": len(run.encoded),
            "appi": run.appi_rows,
            "probes": run.summary,
            "warnings": [run.few] if run.few else [],
            "frontier": [{"fraction": p.fraction, "value": p.value, "groups": list(p.groups)} for p in run.frontier],
            "selection": selection.to_dict(),
            "history": run.opt.history,
            "files": sorted(files),
        }
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _run_record(run: SelectRun) -> dict:
    """How the selection was made: the ``run`` entry of both JSON files."""
    args = run.args
    return {
        "base_model": str(Path(args.model).resolve()),
        "task": "sequence-classification" if run.classification else "causal-lm",
        "classes": run.classes,
        "granularity": args.granularity,
        "data": str(Path(args.data).resolve()),
        "steps": args.steps,
        "lazy": args.lazy,
        "lr": args.lr,
        "seed": args.seed,
        "device": str(run.device),
        "threads": run.threads,
    }


def _write_plots(run: SelectRun) -> list[str]:
    """The influence heatmap, the APPI curves and the frontier; returns their file names."""
    from ..plots import plot_appi_curves, plot_frontier, plot_ppi_heatmap

    out, history = run.out, run.opt.history
    name = Path(run.args.model).name
    plot_ppi_heatmap(history, out / "ppi_heatmap.png", title=f"influence per probe step ({name})")
    plot_appi_curves(history, out / "appi_curves.png", title=f"APPI during the probe phase ({name})")
    plot_frontier(
        {"greedy APPI frontier": run.frontier},
        out / "frontier.png",
        budget=run.args.budget,
        selection=run.selection,
        title=f"predicted loss reduction vs parameters ({name})",
    )
    return ["ppi_heatmap.png", "appi_curves.png", "frontier.png"]


def _print_selection(run: SelectRun) -> None:
    """The selection, its notes and the next step."""
    args, out, selection = run.args, run.out, run.selection
    print()
    print(
        f"selection at budget {args.budget:g} ({args.method}): {'+'.join(selection.groups)} = "
        f"{selection.num_selected:,} "
        f"params ({100 * selection.fraction:.3g}%) -> {out / 'selection.json'}"
    )
    for note in selection.notes:
        print(f"note: {note}")
    print(f"next: train it (README 'What next'): {_next_step(selection, out, args.lora)}")


def _next_step(selection, out: Path, lora: bool) -> str:
    """The few calls that turn ``selection.json`` into a training run, on one line."""
    load = f"sel = Selection.load('{out / 'selection.json'}')"
    if lora and not any(base_name(g) == "others" for g in selection.groups):
        return f"{load}; model = peft.get_peft_model(base, sel.to_peft_config(base)); apply_selection(model, sel)"
    if lora:  # base weights selected: peft cannot express it, the adapters come from sel.lora
        return f"{load}; model = peft.get_peft_model(base, peft.LoraConfig(**sel.lora)); apply_selection(model, sel)"
    return f"{load}; apply_selection(base, sel)"
