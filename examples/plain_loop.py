"""GeNAdaPEFT in a plain PyTorch training loop (design §1).

The only change to an ordinary loop is the optimizer line: AdamW is wrapped, told how to
compute a batch's loss (the closure, a forward pass only), which batches to probe on (batches
the training steps do not see: the slope on the gradient's own batch is biased) and which
parameter groups to track. Every ``--lazy`` steps it probes each group with a few extra forward passes,
sets that group's learning rate by a generalized Newton rule and accumulates its influence
(APPI). At the end the APPI table tells which groups are worth training under a budget. The
loop itself is the package's one training loop, :func:`adapeft_optim.loop.run_steps`: forward,
backward, ``opt.step()``, ``zero_grad``, nothing else.

Offline: a tiny GPT-2 from a config with peft LoRA, on the package's synthetic task.

    python examples/plain_loop.py                 # 200 steps of a 2-layer GPT-2 with LoRA, on CPU
    python examples/plain_loop.py --steps 4 --log-every 2
"""

from __future__ import annotations

import argparse

import torch

from adapeft_optim import GeNAdaPEFT, describe_groups, group_parameters
from adapeft_optim import task as synthetic
from adapeft_optim.loop import run_steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--lazy", type=int, default=8, help="probe every LAZY steps (default: 8)")
    parser.add_argument("--budget", type=float, default=0.1, help="parameter budget to select at (default: 0.1)")
    parser.add_argument("--log-every", type=int, default=40, help="print lrs every N steps (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    # A GPT-2 with 2 layers of width 64 plus LoRA adapters, every parameter trainable.
    model = synthetic.add_lora(synthetic.build_model("small", seed=args.seed), seed=args.seed)
    data = synthetic.FINETUNE_TASK
    generator = torch.Generator().manual_seed(args.seed)

    probe_generator = torch.Generator().manual_seed(args.seed + 1)
    probe_batches = [data.batch(16, probe_generator) for _ in range(32)]  # held out from training
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0),
        closure=lambda batch: model(**batch).loss,  # a forward pass on the probe batch
        probe_data=probe_batches,  # one batch per probe, started over when it ends
        groups=group_parameters(model),
        lazy=args.lazy,
    )

    # The loop: forward, backward, opt.step(), zero_grad, as run_steps takes it, up to each
    # step that is logged.
    batches = (data.batch(16, generator) for _ in range(args.steps))
    logged = [step for step in range(args.steps) if step % args.log_every == 0 or step == args.steps - 1]
    done = 0
    for step in logged:
        losses = run_steps(model, opt, batches, step + 1 - done)
        done = step + 1
        lrs = "  ".join(f"{name}={lr:.2e}" for name, lr in opt.lrs.items())
        print(f"step {step:4d}  loss {losses[-1]:.4f}  lr: {lrs}")

    print()
    print(f"{'group':8s} {'params':>8s} {'share':>7s} {'APPI':>10s} {'lr':>9s}")
    numel_share = {row.name: row.fraction for row in describe_groups(group_parameters(model))}
    for name, appi in sorted(opt.appi.items(), key=lambda kv: -kv[1]):
        print(f"{name:8s} {opt.numel[name]:8d} {numel_share[name]:7.2%} {appi:10.4g} {opt.lrs[name]:9.2e}")
    accepted = sum(r["accepted"] for r in opt.history)
    print(f"\n{accepted}/{len(opt.history)} probes accepted; eval: {synthetic.evaluate(model, data)}")
    if accepted:
        print(f"select(budget={args.budget}): {opt.select(args.budget)}")


if __name__ == "__main__":
    main()
