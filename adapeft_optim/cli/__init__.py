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

Building the parser imports no transformers, peft or tqdm (the ``hf`` extra), so
``adapeft --help`` answers at once; every heavy import happens inside the command that needs it.

The modules: :mod:`~adapeft_optim.cli.parser` (the arguments), :mod:`~adapeft_optim.cli.common`
(:class:`CLIError`, threads, device, output folder, progress), :mod:`~adapeft_optim.cli.data`
(JSONL/CSV examples and labels), :mod:`~adapeft_optim.cli.models` (model, tokenizer, LoRA),
:mod:`~adapeft_optim.cli.select` and :mod:`~adapeft_optim.cli.demo` (the two commands).

Example::

    adapeft demo --out adapeft_out
    adapeft select --model ./my-model --data train.jsonl --budget 0.01 --steps 40 --lora
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Sequence

from .common import CLIError
from .data import load_examples
from .parser import build_parser

__all__ = ["CLIError", "build_parser", "load_examples", "main"]


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

    from ..demo import DemoError

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
