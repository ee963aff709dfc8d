"""``adapeft demo``: the options as a :class:`~adapeft_optim.demo.DemoConfig`, then
:func:`~adapeft_optim.demo.run_demo` (imported when the command runs)."""

from __future__ import annotations

import argparse

from .common import output_folder, progress_mode, set_threads

__all__ = ["demo_command"]


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo with the parsed options; returns the exit status."""
    set_threads(args.threads)
    from ..demo import DemoConfig, run_demo

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
        output_folder(args.out),
        config,
        progress=progress_mode(args) or False,
        verbose=not args.quiet,
    )
    return 0
