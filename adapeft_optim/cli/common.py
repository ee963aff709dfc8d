"""What both commands share: :class:`CLIError` and the settings of a run (torch threads,
device, output folder, progress display). Imports torch only inside the functions that set it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["CLIError", "output_folder", "progress_mode", "resolve_device", "set_threads"]


class CLIError(Exception):
    """A problem with the command's input: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def progress_mode(args: argparse.Namespace) -> str | None:
    """``"bar"`` (tqdm on a terminal), ``"lines"`` (plain lines on stdout, for logs and pipes)
    or ``None`` (``--quiet``)."""
    if args.quiet:
        return None
    return "bar" if sys.stderr.isatty() else "lines"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads (``None``: the usable cores, at most 4); returns the count."""
    import torch

    torch.set_num_threads(requested or min(4, _usable_cores()))
    return torch.get_num_threads()


def resolve_device(spec: str):
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


def output_folder(out: str) -> Path:
    """``--out`` as a folder, created if need be (a file there is an error)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out} is a file; pass a folder to write the results to")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    return path
