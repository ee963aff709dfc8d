"""The ``adapeft`` command line (design §8).

``adapeft demo``
    Algorithm 2 end to end on the embedded synthetic task (:mod:`adapeft_optim.demo`).
``adapeft select``
    The probe phase on your own local Hugging Face model folder and a JSONL/CSV file: APPI per
    parameter group, the greedy frontier, ``selection.json`` and plots, to train the selected
    groups with your usual PEFT loop (``apply_selection(model, Selection.load(path))``).

Errors in the input (a bad option, a missing folder, a folder without ``config.json`` or
tokenizer, an unknown model type or one that does not fit the data, an unreadable or malformed
data file, an empty one, a device that is not there) end the command with exit status 2 and one
line on stderr that names the problem and the fix; no traceback. Warnings (too few valued
probes, the optimizer's divergence guard) are one line each on stderr as well.

Building the parser imports neither torch nor transformers (seconds), so ``adapeft --help``
answers at once; every heavy import happens inside the command that needs it.

Example::

    adapeft demo --out adapeft_out
    adapeft select --model ./my-model --data train.jsonl --budget 0.01 --steps 40 --lora
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "build_parser", "load_examples", "main"]

# Files any of which makes a folder hold a tokenizer AutoTokenizer can load.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CLIError(Exception):
    """A problem with the command's input: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# -- parser -------------------------------------------------------------------------------------

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


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    """The ``adapeft`` argument parser (subcommands ``demo`` and ``select``).

    It imports neither torch nor transformers, so ``--help`` is immediate.
    """
    from . import __version__

    parser = _Parser(
        prog="adapeft",
        description=("AdaPEFT on GeN: parameter influence (APPI) per group and Pareto-optimal PEFT selection."),
    )
    parser.add_argument("--version", action="version", version=f"adapeft-optim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,select}")
    # Options both subcommands share.
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
    demo.set_defaults(func=_run_demo)

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
    select.set_defaults(func=_run_select)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adapeft`` command line; returns the exit status.

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``)
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the error line (or --help)
        return exit_.code if isinstance(exit_.code, int) else 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"adapeft {args.command}"
    missing = [m for m in ("transformers", "peft", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"{prog}: error: the command line needs {', '.join(missing)}: pip install 'adapeft-optim[hf]'",
            file=sys.stderr,
        )
        return 2

    def one_line(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"{prog}: warning: {text}", file=sys.stderr, flush=True)

    from .demo import DemoError

    with warnings.catch_warnings():
        warnings.showwarning = one_line  # restored on leaving the block
        try:
            return args.func(args)
        except CLIError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return err.code
        except DemoError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130


def _progress_mode(args: argparse.Namespace) -> str | None:
    """``"bar"`` (tqdm on a terminal), ``"lines"`` (plain lines on stdout, for logs and pipes)
    or ``None`` (``--quiet``)."""
    if args.quiet:
        return None
    return "bar" if sys.stderr.isatty() else "lines"


def _set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads (``None``: the usable cores, at most 4); returns the count."""
    import torch

    torch.set_num_threads(requested or min(4, _usable_cores()))
    return torch.get_num_threads()


def _resolve_device(spec: str):
    """The ``torch.device`` of ``--device`` (checked: the device must be there)."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (
                f"this torch {torch.__version__} is a CPU-only build"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise CLIError(f"--device {spec}: {why}; use --device cpu (or auto)")
        index = int(spec.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise CLIError(
                f"--device {spec}: there {'is' if count == 1 else 'are'} {count} CUDA "
                f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); pick one of "
                f"them or use --device cuda"
            )
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CLIError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(spec)


def _output_folder(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out} is a file; pass a folder to write the results to")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    return path


# -- demo ---------------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from .demo import DemoConfig, run_demo

    config = DemoConfig(
        seed=args.seed,
        steps=args.steps,
        budget=args.budget,
        small=args.small,
        large=args.large,
        warmup=args.warmup,
        lazy=args.lazy,
        method=args.method,
        pretrain_steps=args.pretrain_steps,
        batch_size=args.batch_size,
        plots=not args.no_plots,
    )
    run_demo(
        _output_folder(args.out),
        config,
        progress=_progress_mode(args) or False,
        verbose=not args.quiet,
    )
    return 0


# -- select: data -------------------------------------------------------------------------------


def load_examples(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str | None = None,
) -> tuple[list[str], list[Any] | None]:
    """Texts (and labels) of a JSONL or CSV file.

    With ``label_column=None`` the file is a classification set when its first example has a
    ``label`` field/column; with a name the column is required.

    Returns:
        ``(texts, labels)``; ``labels`` is ``None`` for a language-modelling file.

    Raises:
        CLIError: the file is missing, unreadable, not JSONL/CSV, malformed (with the line
            number), lacks the text or label column, or holds no example.
    """
    path = Path(path)
    if not path.exists():
        raise CLIError(f"data file {path} does not exist")
    if path.is_dir():
        raise CLIError(f"data file {path} is a folder; pass a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        rows = _read_csv(path, text_column, label_column, "\t" if suffix == ".tsv" else ",")
    else:
        raise CLIError(
            f"data file {path} has an unknown format {suffix or '(no suffix)'}; use .jsonl "
            f"(one JSON object per line) or .csv (a header row with a '{text_column}' column)"
        )
    if not rows:
        raise CLIError(f"data file {path} holds no examples; add rows with a '{text_column}' field")
    label_key = label_column
    if label_key is None and "label" in rows[0][1]:
        label_key = "label"
    texts, labels = [], []
    for line, row in rows:
        where = f"{path}:{line}"
        if text_column not in row:
            fields = ", ".join(repr(k) for k in row) or "none"
            raise CLIError(
                f"{where}: no '{text_column}' field (fields: {fields}); name the text field with --text-column"
            )
        text = row[text_column]
        if not isinstance(text, str):
            raise CLIError(f"{where}: '{text_column}' must be a string, got {type(text).__name__} {text!r}")
        texts.append(text)
        if label_key is None:
            if "label" in row and label_column is None:
                raise CLIError(
                    f"{where}: has a 'label' but the first example has none; label every example "
                    f"(classification) or none (language modelling)"
                )
            continue
        if label_key not in row and label_column is not None:
            fields = ", ".join(repr(k) for k in row) or "none"
            raise CLIError(
                f"{where}: no '{label_key}' field (fields: {fields}); name the label field "
                "with --label-column, or leave it out for language modelling"
            )
        value = row.get(label_key)
        if value is None or value == "":
            raise CLIError(f"{where}: no '{label_key}' value; every example of a classification file needs a label")
        if isinstance(value, (dict, list, float)) and not (isinstance(value, float) and value.is_integer()):
            raise CLIError(f"{where}: label {value!r} is not a class name or integer id")
        labels.append(value)
    return texts, (labels if label_key is not None else None)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CLIError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(obj, dict):
                    raise CLIError(
                        f'{path}:{lineno}: expected a JSON object such as {{"text": "..."}}, got {type(obj).__name__}'
                    )
                rows.append((lineno, obj))
    except UnicodeDecodeError as err:
        raise CLIError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise CLIError(f"cannot read data file {path}: {err.strerror or err}") from None
    return rows


def _read_csv(path: Path, text_column: str, label_column: str | None, delimiter: str) -> list[tuple[int, dict]]:
    """Rows of a CSV file with the line each *starts* on (a quoted field may span lines)."""
    rows: list[tuple[int, dict]] = []
    header: list[str] | None = None
    start = 1  # the line the record being read starts on
    try:
        with open(path, encoding="utf-8", newline="") as f:
            # strict: an unterminated quote is an error, not a field swallowing the file's rest
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            try:
                for fields in reader:
                    line, start = start, reader.line_num + 1
                    if not fields:  # a blank line
                        continue
                    if header is None:
                        header = fields
                        _check_csv_header(path, header, text_column, label_column)
                        continue
                    if len(fields) > len(header):
                        raise CLIError(
                            f"{path}:{line}: {len(fields)} fields, more than the header's "
                            f"{len(header)} ({', '.join(header)}); quote fields that hold a "
                            f"'{delimiter}'"
                        )
                    row = {h: fields[i] if i < len(fields) else None for i, h in enumerate(header)}
                    if row[text_column] is None:
                        raise CLIError(
                            f"{path}:{line}: {len(fields)} fields, fewer than the header's "
                            f"{len(header)}; no '{text_column}' value"
                        )
                    rows.append((line, row))
            except csv.Error as err:
                if "unexpected end of data" in str(err):
                    raise CLIError(
                        f"{path}:{start}: a quoted field opened on this line is never closed "
                        f"(the file ends at line {reader.line_num}); add the closing quote, "
                        f'and write a quote inside a quoted field as ""'
                    ) from None
                raise CLIError(
                    f'{path}:{start}: malformed CSV ({err}); write a quote inside a quoted field as ""'
                ) from None
    except UnicodeDecodeError as err:
        raise CLIError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise CLIError(f"cannot read data file {path}: {err.strerror or err}") from None
    return rows


def _check_csv_header(path: Path, header: list[str], text_column: str, label_column: str | None) -> None:
    columns = ", ".join(header)
    if text_column not in header:
        raise CLIError(
            f"{path}: no '{text_column}' column (columns: {columns}); name the text column with --text-column"
        )
    if label_column is not None and label_column not in header:
        raise CLIError(
            f"{path}: no '{label_column}' column (columns: {columns}); name the label column "
            "with --label-column, or leave it out for language modelling"
        )


def _label_ids(labels: list[Any]) -> tuple[list[int], list[str]]:
    """Class ids (sorted class names: numerically when every label is an integer)."""

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        return None

    ints = [as_int(v) for v in labels]
    if all(i is not None for i in ints):
        keys: list[Any] = ints
        classes = sorted(set(ints))
    else:
        keys = [str(v) for v in labels]
        classes = sorted(set(keys))
    index = {c: i for i, c in enumerate(classes)}
    return [index[k] for k in keys], [str(c) for c in classes]


# -- select: model ------------------------------------------------------------------------------


def _load_model(folder: str, classification: bool, classes: list[str] | None):
    path = Path(folder)
    if not path.exists():
        raise CLIError(f"model folder {folder} does not exist")
    if not path.is_dir():
        raise CLIError(f"--model {folder} is not a folder; pass the folder written by model.save_pretrained()")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CLIError(
            f"{folder} has no config.json: not a Hugging Face model folder (write one with "
            f"model.save_pretrained('{folder}'))"
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIError(f"cannot read {config_file}: {err}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not model_type:
        raise CLIError(f"{config_file} has no 'model_type'; re-save the model with save_pretrained()")

    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError):
        raise CLIError(
            f"unknown model type {model_type!r} in {config_file}: transformers "
            f"{transformers.__version__} "
            f"does not know it (upgrade transformers, or fix model_type)"
        ) from None
    except OSError as err:
        raise CLIError(f"cannot load {config_file}: {str(err).splitlines()[0]}") from None
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise CLIError(
            f"{folder} has no weights ({' / '.join(_WEIGHT_FILES[::2])}); save the model with "
            f"model.save_pretrained('{folder}')"
        )
    if classification:
        config.num_labels = len(classes)
        config.id2label = dict(enumerate(classes))
        config.label2id = {c: i for i, c in enumerate(classes)}
        auto, kind = AutoModelForSequenceClassification, "sequence classification"
    else:
        auto, kind = AutoModelForCausalLM, "causal language modelling"
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialised classifier" notices are expected here
    hf_logging.disable_progress_bar()
    try:
        model, info = auto.from_pretrained(
            folder,
            config=config,
            local_files_only=True,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise CLIError(
                f"model type {model_type!r} has no {kind} model in transformers; "
                + (
                    "use a file without labels for language modelling"
                    if classification
                    else "use a file with a 'label' column for classification"
                )
            ) from None
        raise CLIError(f"cannot load the model from {folder}: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise CLIError(f"cannot load the model weights from {folder}: {str(err).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if not classification:
        # transformers' own notices (hidden above) would only hint at these two; say them.
        if _attends_ahead(model):
            raise CLIError(
                f"{folder} holds a {model_type!r} model whose attention is bidirectional (an "
                f"encoder): as a language model every position would see the next token it is "
                f"asked to predict, with a new, untrained head; give --label-column LABEL for "
                f"sequence classification with an encoder, or use a causal language model "
                f"(GPT-2, Llama, ...) for text alone"
            )
        missing = _missing_head(model, info.get("missing_keys", ()))
        if missing:
            raise CLIError(
                f"{folder} has no weights for the language-model head ({', '.join(missing)}), "
                f"which would start from random values and dominate every probe; save the model "
                f"with its head (AutoModelForCausalLM ... .save_pretrained()), or give "
                f"--label-column LABEL for sequence classification"
            )
        if getattr(model, "loss_type", None) is None:
            model.loss_type = "ForCausalLM"  # what transformers falls back to, minus its warning
    return model


def _attends_ahead(model) -> bool:
    """Whether the first position's output depends on a later token: bidirectional attention.

    Two sequences that differ from the second token on go through the model; under a causal
    mask the first position's logits are the same (bit for bit on CPU: the masked scores are
    exactly zero after the softmax); an encoder's are not.
    """
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    length = 4
    first = torch.arange(length) % vocab
    second = first.clone()
    second[1:] = (first[1:] + length) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = (
                model(
                    input_ids=torch.stack([first, second]),
                    attention_mask=torch.ones(2, length, dtype=torch.long),
                )
                .logits[:, 0]
                .float()
            )
    finally:
        model.train(was_training)
    change = (logits[0] - logits[1]).abs().max().item()
    scale = logits.abs().max().item()
    return change > 1e-5 * max(scale, 1e-12)


def _missing_head(model, missing_keys) -> list[str]:
    """The output layer's parameters that the checkpoint did not hold (initialised at random)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return []
    prefix = next((name for name, module in model.named_modules() if module is head), None)
    if prefix is None:
        return []
    mine = {f"{prefix}.{name}" for name, _ in head.named_parameters()}
    # A tied head shares the input embedding's tensor, which the checkpoint holds.
    tied = {f"{prefix}.{name}" for name, p in head.named_parameters() if p is model.get_input_embeddings().weight}
    return sorted(k for k in missing_keys if k in mine and k not in tied)


def _load_tokenizer(folder: str):
    path = Path(folder)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise CLIError(
            f"{folder} has no tokenizer (none of tokenizer.json, tokenizer_config.json, "
            f"vocab.txt, ...); save it next to the model with tokenizer.save_pretrained('{folder}')"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # transformers raises many types here; one line is all we print
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CLIError(f"cannot load the tokenizer from {folder}: {msg}") from None
    if tokenizer.pad_token is None:
        # Padding is masked out (attention mask, labels -100), so any existing token will do.
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
        else:
            raise CLIError(
                f"the tokenizer in {folder} has no pad, eos, unk or bos token to pad batches with; "
                f"set one (tokenizer.pad_token = ...) and save it again"
            )
    return tokenizer


def _lora_targets(model) -> list[str]:
    """Names of the linear layers outside the output head (peft's ``target_modules``)."""
    from torch import nn

    from .grouping import HEAD_NAMES

    try:
        from transformers.pytorch_utils import Conv1D

        linear: tuple[type, ...] = (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover - every supported transformers has Conv1D
        linear = (nn.Linear,)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, linear) or module is output:
            continue
        if name.split(".")[0] in HEAD_NAMES:
            continue
        names.append(name)
    return names


# -- select: the run ----------------------------------------------------------------------------


def _run_select(args: argparse.Namespace) -> int:
    texts, raw_labels = load_examples(args.data, args.text_column, args.label_column)
    classification = raw_labels is not None
    labels, classes = _label_ids(raw_labels) if classification else (None, None)
    if classification and len(classes) < 2:
        raise CLIError(
            f"{args.data}: every example has the label {classes[0]!r}; classification needs 2 or more classes"
        )
    threads = _set_threads(args.threads)
    device = _resolve_device(args.device)

    import torch

    from .demo import (
        FewProbesWarning,
        appi_table,
        few_probes_message,
        format_probe_summary,
        format_table,
        json_safe,
        probe_summary,
        select_or_explain,
    )
    from .grouping import group_parameters
    from .optimizer import GeNAdaPEFT
    from .selection import pareto_frontier

    model_dir = args.model
    model = _load_model(model_dir, classification, classes)
    tokenizer = _load_tokenizer(model_dir)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise CLIError(
            f"the tokenizer in {model_dir} has {len(tokenizer)} tokens but the model's embedding "
            f"holds {vocab}; save the tokenizer the model was trained with"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    out = _output_folder(args.out)

    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    max_length = min(args.max_length, limit) if limit else args.max_length
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    # A language-model example needs two tokens to predict one; a classifier needs one.
    keep = [i for i, ids in enumerate(encoded) if len(ids) >= (1 if classification else 2)]
    if not keep:
        raise CLIError(f"{args.data}: every text tokenizes to fewer than {1 if classification else 2} tokens")
    encoded = [encoded[i] for i in keep]
    if classification:
        labels = [labels[i] for i in keep]

    if args.lora:
        from peft import LoraConfig, get_peft_model

        targets = _lora_targets(model)
        if not targets:
            raise CLIError(f"--lora: the model in {model_dir} has no linear layer outside its head to adapt")
        modules = dict(model.named_modules())
        # GPT-2-style Conv1D layers store (in, out) weights; peft must be told (it warns otherwise).
        conv1d = all(type(modules[name]).__name__ == "Conv1D" for name in targets)
        torch.manual_seed(args.seed)
        with warnings.catch_warnings():
            # peft calls a transformers property that transformers 5 deprecates; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=args.lora_rank,
                    lora_alpha=2 * args.lora_rank,
                    target_modules=targets,
                    lora_dropout=0.0,
                    fan_in_fan_out=conv1d,
                ),
            )
    model.to(device)
    for p in model.parameters():  # the probe phase trains everything (Algorithm 2, line 2)
        p.requires_grad_(True)
    groups = group_parameters(model, granularity=args.granularity)
    params = [p for ps in groups.values() for p in ps]

    def batches(seed: int):
        """Endless shuffled batches of the data, in an order drawn from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        while True:
            idx = []
            while len(idx) < args.batch_size:
                if not order:
                    order = torch.randperm(len(encoded), generator=generator).tolist()
                idx.append(order.pop())
                if len(encoded) < args.batch_size and not order:
                    break  # a tiny file: one pass is the batch
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
            if classification:
                batch["labels"] = torch.tensor([labels[i] for i in idx])
            else:
                batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            yield {k: v.to(device) for k, v in batch.items()}

    # Probes evaluate a second stream over the data, not the batch of the gradient (unbiased slope).
    opt = GeNAdaPEFT(
        torch.optim.AdamW(params, lr=args.lr),
        closure=lambda batch: model(**batch).loss,
        probe_data=batches(args.seed + 1),
        groups=groups,
        lazy=args.lazy,
    )
    train_batches = batches(args.seed)

    task = "sequence-classification" if classification else "causal-lm"
    if not args.quiet:
        kind = f"classification ({len(classes)} classes)" if classification else "language modelling"
        print(
            f"adapeft select: {type(model).__name__} from {model_dir}, {len(encoded)} examples, "
            f"{kind}; {args.steps} steps, probing every {args.lazy}; on {device}, {threads} "
            f"torch thread{'s' if threads != 1 else ''}",
            flush=True,
        )
    mode = _progress_mode(args)
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=args.steps, desc="probe phase", leave=False)
    elif mode == "lines":
        from .task import LineProgress

        bar = LineProgress(args.steps, "probe phase")
    else:
        bar = None
    model.train()
    for _ in range(args.steps):
        loss = model(**next(train_batches)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    if bar is not None:
        bar.close()

    appi, numel = opt.appi, opt.numel
    summary = probe_summary(opt.history, appi)
    if not any(r["valued"] for r in summary):
        reasons = sorted({str(r["reason"]) for r in opt.history})
        raise CLIError(
            f"no probe was valued in {args.steps} steps (reasons: "
            f"{', '.join(reasons) or 'no probe ran'}); "
            f"run more --steps, probe more often (--lazy), or try another --lr",
            code=1,
        )
    total = sum(numel.values())
    frontier = pareto_frontier(appi, numel, method="greedy")
    appi_rows = appi_table(opt)
    print(
        format_table(
            ["rank", "group", "params", "% params", "APPI", "value", "Newton lr"],
            [
                [
                    r["rank"] or "-",
                    r["group"],
                    f"{r['numel']:,}",
                    f"{100 * r['fraction']:.3g}%",
                    f"{r['appi']:.4g}",
                    f"{r['value']:.4g}",
                    f"{r['lr']:.3g}",
                ]
                for r in appi_rows
            ],
            "rlrrrrr",
        )
    )
    print()
    print("probes per group (valued: counted in APPI; accepted: its lr fit was used)")
    print(format_probe_summary(summary))
    few = few_probes_message(
        summary,
        f"run more --steps (a probe every --lazy {args.lazy} steps) before trusting the selection",
    )
    if few:
        warnings.warn(few, FewProbesWarning, stacklevel=1)
    print()
    print(
        format_table(
            ["k", "groups", "% params", "predicted value"],
            [
                [k, "+".join(p.groups) or "(none)", f"{100 * p.fraction:.3g}%", f"{p.value:.4g}"]
                for k, p in enumerate(frontier)
            ],
            "rlrr",
        )
    )
    selection, empty = select_or_explain(opt, args.budget, args.method)
    if not selection.groups:
        raise CLIError(f"--budget {args.budget:g} selects no group: {empty}")
    if args.lora:
        selection = selection.with_lora(model)
    run = {
        "base_model": str(Path(model_dir).resolve()),
        "task": task,
        "classes": classes,
        "granularity": args.granularity,
        "data": str(Path(args.data).resolve()),
        "steps": args.steps,
        "lazy": args.lazy,
        "lr": args.lr,
        "seed": args.seed,
        "device": str(device),
        "threads": threads,
    }
    # The Selection's own fields (groups, budget, method, lora, ...) and how it was made;
    # Selection.load reads the former and ignores "run".
    (out / "selection.json").write_text(
        json.dumps(selection.to_dict() | {"run": run}, indent=2) + "\n", encoding="utf-8"
    )
    files = ["results.json", "selection.json"]
    if not args.no_plots:
        from .plots import plot_appi_curves, plot_frontier, plot_ppi_heatmap

        name = Path(model_dir).name
        plot_ppi_heatmap(opt.history, out / "ppi_heatmap.png", title=f"influence per probe step ({name})")
        plot_appi_curves(opt.history, out / "appi_curves.png", title=f"APPI during the probe phase ({name})")
        plot_frontier(
            {"greedy APPI frontier": frontier},
            out / "frontier.png",
            budget=args.budget,
            selection=selection,
            title=f"predicted loss reduction vs parameters ({name})",
        )
        files += ["ppi_heatmap.png", "appi_curves.png", "frontier.png"]
    results = json_safe(
        {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "run": run,
            "model": {
                "class": type(model).__name__,
                "parameters": total,
                "task": "classification" if classification else "language-modelling",
                "classes": classes,
            },
            "examples": len(encoded),
            "appi": appi_rows,
            "probes": summary,
            "warnings": [few] if few else [],
            "frontier": [{"fraction": p.fraction, "value": p.value, "groups": list(p.groups)} for p in frontier],
            "selection": selection.to_dict(),
            "history": opt.history,
            "files": sorted(files),
        }
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print()
    print(
        f"selection at budget {args.budget:g} ({args.method}): {'+'.join(selection.groups)} = "
        f"{selection.num_selected:,} "
        f"params ({100 * selection.fraction:.3g}%) -> {out / 'selection.json'}"
    )
    for note in selection.notes:
        print(f"note: {note}")
    print(f"next: train it (README 'What next'): {_next_step(selection, out, args.lora)}")
    return 0


def _next_step(selection, out: Path, lora: bool) -> str:
    """The few calls that turn ``selection.json`` into a training run, on one line."""
    from .grouping import base_name

    load = f"sel = Selection.load('{out / 'selection.json'}')"
    if lora and not any(base_name(g) == "others" for g in selection.groups):
        return f"{load}; model = peft.get_peft_model(base, sel.to_peft_config(base)); apply_selection(model, sel)"
    if lora:  # base weights selected: peft cannot express it, the adapters come from sel.lora
        return f"{load}; model = peft.get_peft_model(base, peft.LoraConfig(**sel.lora)); apply_selection(model, sel)"
    return f"{load}; apply_selection(base, sel)"
