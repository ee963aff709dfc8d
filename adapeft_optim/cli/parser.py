"""The ``adapeft`` argument parser: one function per subcommand's arguments, the value types
with their one-line errors. Imports neither torch nor transformers, so ``--help`` is immediate."""

from __future__ import annotations

import argparse
import math
import re

from .. import __version__
from .demo import demo_command
from .select import select_command

__all__ = ["build_parser"]

# The demo's defaults, repeated here so that building the parser needs no torch; a test checks
# them against adapeft_optim.task.
_DEMO_SIZES = "tiny (1x32), small (2x64), large (4x128), xl (6x192)"
_DEMO_PRETRAIN_STEPS = 200
_DEMO_BATCH_SIZE = 16
_METHODS = ("greedy", "prefix", "exact")
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``adapeft select: error: ... (see adapeft select --help)``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- value types --------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: use a fraction such as 0.01") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: use a fraction of parameters in (0, 1], e.g. 0.01")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use an integer >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a number > 0") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a number > 0")
    return value


def _device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    return text


# -- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``adapeft`` argument parser (subcommands ``demo`` and ``select``).

    It imports neither torch nor transformers, so ``--help`` is immediate.
    """
    parser = _Parser(
        prog="adapeft",
        description=("AdaPEFT on GeN: parameter influence (APPI) per group and Pareto-optimal PEFT selection."),
    )
    parser.add_argument("--version", action="version", version=f"adapeft-optim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,select}")
    common = _common_arguments()
    _add_demo(sub, common)
    _add_select(sub, common)
    return parser


def _common_arguments() -> argparse.ArgumentParser:
    """Options both subcommands share (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="adapeft_out", help="output folder (default: adapeft_out)")
    common.add_argument(
        "--method",
        choices=_METHODS,
        default="greedy",
        help="selection method: greedy (APPI order, skipping what does not fit), prefix (stop "
        "at the first that does not fit), exact (0-1 knapsack) (default: greedy)",
    )
    common.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    common.add_argument("--quiet", action="store_true", help="no progress or phase messages, tables only")
    return common


def _add_demo(sub, common: argparse.ArgumentParser) -> None:
    """``adapeft demo``: the settings of :class:`~adapeft_optim.demo.DemoConfig`."""
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="Algorithm 2 end to end on the embedded synthetic task (offline, minutes on CPU)",
        description=(
            "Pre-train a small and a larger GPT-2 on synthetic task A (cached), probe the small "
            "one with LoRA on the shifted task B for ~10% of the steps, select groups at "
            "--budget, transfer the selection to the larger model, train it, and compare with "
            "fixed PEFT recipes. Writes PNGs, results.json and selection.json to --out."
        ),
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of LoRA init and batches (default: 0)")
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=200,
        help="fine-tuning steps of each large-model run; the warm-up is 10%% of it (default: 200)",
    )
    demo.add_argument(
        "--budget",
        type=_fraction,
        default=0.1,
        help="fraction of the small model's parameters to select (default: 0.1)",
    )
    demo.add_argument(
        "--small",
        default="small",
        help=f"probed model size: {_DEMO_SIZES} or LxD (default: small)",
    )
    demo.add_argument("--large", default="large", help="size the selection is transferred to (default: large)")
    demo.add_argument(
        "--warmup",
        type=_positive_int,
        default=None,
        help="probing steps (default: 10%% of --steps, at least 4 x --lazy)",
    )
    demo.add_argument("--lazy", type=_positive_int, default=2, help="probe every LAZY warm-up steps (default: 2)")
    demo.add_argument(
        "--pretrain-steps",
        type=_positive_int,
        default=_DEMO_PRETRAIN_STEPS,
        help=f"pre-training steps on task A, cached per size (default: {_DEMO_PRETRAIN_STEPS})",
    )
    demo.add_argument(
        "--batch-size",
        type=_positive_int,
        default=_DEMO_BATCH_SIZE,
        help=f"sequences per step (default: {_DEMO_BATCH_SIZE})",
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads; the demo's tiny models run fastest on one, and the numbers depend on it (default: 1)",
    )
    demo.set_defaults(func=demo_command)


def _add_select(sub, common: argparse.ArgumentParser) -> None:
    """``adapeft select``: its description, then its options in three groups."""
    select = sub.add_parser(
        "select",
        parents=[common],
        help="probe a local Hugging Face model on your data and select parameter groups",
        description=(
            "Load a local Hugging Face model folder (config.json, weights, tokenizer) and a "
            "JSONL or CSV file (a 'text' column: causal language modelling, which needs a "
            "causal LM such as GPT-2 or Llama; with a label column: sequence classification, "
            "for encoders such as BERT as well), run GeNAdaPEFT's probe phase, and write "
            "selection.json, results.json and plots to --out."
        ),
    )
    _add_select_probe_options(select)
    _add_select_model_options(select)
    _add_select_runtime_options(select)
    select.set_defaults(func=select_command)


def _add_select_probe_options(select: argparse.ArgumentParser) -> None:
    """The model, the data, the budget and the probe phase's steps, lr and batches."""
    select.add_argument("--model", required=True, help="local model folder (save_pretrained output)")
    select.add_argument("--data", required=True, help=".jsonl (one JSON object per line) or .csv with a header")
    select.add_argument(
        "--budget",
        required=True,
        type=_fraction,
        help="fraction of the parameters to select, e.g. 0.01",
    )
    select.add_argument(
        "--steps",
        type=_positive_int,
        default=40,
        help="probe-phase steps; a probe every LAZY steps, and a group's rank needs 3 valued probes (default: 40)",
    )
    select.add_argument("--lazy", type=_positive_int, default=4, help="probe every LAZY steps (default: 4)")
    select.add_argument(
        "--lr",
        type=_positive_float,
        default=1e-4,
        help="base lr of the inner AdamW; GeNAdaPEFT adapts it per group (default: 1e-4)",
    )
    select.add_argument("--batch-size", type=_positive_int, default=8, help="examples per step (default: 8)")
    select.add_argument(
        "--max-length",
        type=_positive_int,
        default=128,
        help="truncate texts to this many tokens (default: 128)",
    )


def _add_select_model_options(select: argparse.ArgumentParser) -> None:
    """The data's columns, LoRA adapters and how parameters are grouped."""
    select.add_argument("--text-column", default="text", help="column/field holding the text (default: text)")
    select.add_argument(
        "--label-column",
        default=None,
        help="column/field holding the class label; when given it is required, when left "
        "out a 'label' field makes it classification (default: label if present)",
    )
    select.add_argument(
        "--lora",
        action="store_true",
        help="add peft LoRA adapters (lora_A/lora_B groups) to every linear layer but the head",
    )
    select.add_argument("--lora-rank", type=_positive_int, default=8, help="LoRA rank with --lora (default: 8)")
    select.add_argument(
        "--granularity",
        choices=("type", "block"),
        default="type",
        help="group by parameter role, or by role and transformer block (default: type)",
    )


def _add_select_runtime_options(select: argparse.ArgumentParser) -> None:
    """The seed, the device and torch's CPU threads."""
    select.add_argument("--seed", type=int, default=0, help="seed of the batch order (default: 0)")
    select.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps (default: auto)",
    )
    select.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads; on a busy machine 1 can be several times faster than more "
        "(default: the usable cores, at most 4)",
    )
