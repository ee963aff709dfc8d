"""``adapeft demo``: Algorithm 2 of the paper end to end, offline, on the embedded task.

1. Pre-trained GPT-2s, a small one and a larger one, on synthetic task A (cached after the
   first run; see :mod:`adapeft_optim.demo.task` and :mod:`adapeft_optim.demo.training`).
2. Warm-up with probes (Algorithm 1): the *small* model with LoRA, every group trainable,
   GeNAdaPEFT over AdamW on task B for ~10% of the step budget.
3. The APPI table and the greedy frontier (:func:`~adapeft_optim.selection.pareto_frontier`).
4. The selection at ``budget`` (a fraction of the small model's parameters), transferred by
   group name to the *large* model with :func:`~adapeft_optim.selection.apply_selection` and
   trained there with plain AdamW for the full step budget (the cost of ordinary PEFT).
5. The same step budget, batches and seed for fixed recipes on the large model (LoRA, LoRA-FA,
   BitFit, LayerNorm, linear probing, full fine-tuning), and a comparison table.
6. ``results.json`` (every number of the tables, the probe history; JSON-safe: non-finite
   floats are ``null``), ``selection.json`` and PNGs in the output folder.

Everything that enters ``results.json`` is a function of the arguments and of the number of
torch threads (recorded in its ``config``; float sums are ordered differently with more
threads, APPI moved by up to 0.3% between 1 and 2): the same seed and the same thread count
give the same file (timings are printed, not saved).

The modules: :mod:`~adapeft_optim.demo.config` (the settings), :mod:`~adapeft_optim.demo.run`
(the phases), :mod:`~adapeft_optim.demo.task` (corpus and models),
:mod:`~adapeft_optim.demo.training` (train, probe, evaluate, the pre-training cache),
:mod:`~adapeft_optim.demo.tables` and
:mod:`~adapeft_optim.demo.figures` (what is printed and drawn). The text reports shared with
the command line (:func:`format_table`, :func:`appi_table`, ...) live in
:mod:`adapeft_optim.report`, the progress display in :mod:`adapeft_optim.progress`; both are
re-exported here.
"""

from __future__ import annotations

from ..report import (
    MIN_VALUED_PROBES,
    FewProbesWarning,
    appi_table,
    few_probes_message,
    format_probe_summary,
    format_table,
    json_safe,
    probe_summary,
    select_or_explain,
)
from .config import DemoConfig, DemoError
from .run import run_demo

__all__ = [
    "MIN_VALUED_PROBES",
    "DemoConfig",
    "DemoError",
    "FewProbesWarning",
    "appi_table",
    "few_probes_message",
    "format_probe_summary",
    "format_table",
    "json_safe",
    "probe_summary",
    "run_demo",
    "select_or_explain",
]
