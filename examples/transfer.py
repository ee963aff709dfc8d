"""Algorithm 2 of the AdaPEFT paper: select on a small model, transfer to a larger one.

1. Probe a small pre-trained GPT-2 (with LoRA, everything trainable) with GeNAdaPEFT for a
   short warm-up (10% of the horizon) on the fine-tuning task.
2. Select the groups with the best predicted loss reduction per parameter under a budget,
   and save the selection as JSON.
3. Load the JSON, make exactly those groups trainable on a 4x larger GPT-2 (same group names)
   and train it with plain AdamW: the cost of ordinary PEFT.
4. Save only the trained tensors (safetensors) and report the evaluation.

Offline: the package's synthetic task; the pre-trained weights are cached under
~/.cache/adapeft_optim (or $ADAPEFT_CACHE) after the first run.

    python examples/transfer.py                      # probe a small GPT-2, train a larger one, on CPU
    python examples/transfer.py --steps 4 --small tiny --large tiny --pretrain-steps 4
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from adapeft_optim import GeNAdaPEFT, Selection, apply_selection, group_parameters, save_selected
from adapeft_optim import task as synthetic
from adapeft_optim.loop import run_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps T on the large model (default: 200)")
    parser.add_argument("--budget", type=float, default=0.1, help="fraction of parameters to train (default: 0.1)")
    parser.add_argument("--small", default="small", help="probed model size (default: small, 2x64)")
    parser.add_argument("--large", default="large", help="target model size (default: large, 4x128)")
    parser.add_argument("--lazy", type=int, default=2, help="probe every LAZY warm-up steps (default: 2)")
    parser.add_argument("--pretrain-steps", type=int, default=synthetic.PRETRAIN_STEPS)
    parser.add_argument(
        "--out",
        default="adapeft_out/transfer",
        help="output folder (default: adapeft_out/transfer)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = synthetic.FINETUNE_TASK

    # 1. Warm-up with probes on the small model (Algorithm 2, lines 1-2).
    small = synthetic.add_lora(synthetic.pretrained_model(args.small, steps=args.pretrain_steps), seed=args.seed)
    probe_generator = torch.Generator().manual_seed(args.seed + 1)
    opt = GeNAdaPEFT(
        torch.optim.AdamW(small.parameters(), lr=synthetic.PROBE_LR, weight_decay=0.0),
        closure=lambda batch: small(**batch).loss,
        probe_data=[data.batch(synthetic.BATCH_SIZE, probe_generator) for _ in range(16)],
        groups=group_parameters(small),
        lazy=args.lazy,
    )
    generator = torch.Generator().manual_seed(args.seed)
    warmup = max(4 * args.lazy, round(0.1 * args.steps))
    run_steps(small, opt, (data.batch(synthetic.BATCH_SIZE, generator) for _ in range(warmup)), warmup)
    print("APPI on the small model:", {k: float(f"{v:.3g}") for k, v in opt.appi.items()})

    # 2. Select under the budget (line 3) and save the choice.
    if not any(r["accepted"] for r in opt.history):
        print("no probe was accepted; run more --steps")
        return 1
    selection = opt.select(args.budget)
    if not selection.groups:
        print(f"budget {args.budget} selects no group; raise --budget")
        return 1
    selection.save(out / "selection.json")
    print(f"selected on the small model: {selection}")

    # 3. Transfer by group name and train the large model with ordinary PEFT (line 4).
    selection = Selection.load(out / "selection.json")
    base = synthetic.pretrained_model(args.large, steps=args.pretrain_steps)
    large = synthetic.add_lora(copy.deepcopy(base), seed=args.seed, train_all=False)
    apply_selection(large, selection)
    trainable, total = synthetic.count_parameters(large)
    print(
        f"large model: training {'+'.join(selection.groups)} = {trainable:,} of {total:,} "
        f"parameters ({trainable / total:.2%})"
    )
    lr = synthetic.recipe_lr(selection.groups)
    adamw = torch.optim.AdamW([p for p in large.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    batches = (data.batch(synthetic.BATCH_SIZE, generator) for _ in range(args.steps))
    run_steps(large, adamw, batches, args.steps)

    # 4. Keep only what was trained.
    save_selected(large, selection, out / "selected.safetensors")
    before = synthetic.evaluate(synthetic.add_lora(copy.deepcopy(base), seed=args.seed), data)
    after = synthetic.evaluate(large, data)
    print(
        f"eval on the fine-tuning task: before loss {before['loss']:.4f} acc "
        f"{before['accuracy']:.3f}; "
        f"after loss {after['loss']:.4f} acc {after['accuracy']:.3f}"
    )
    print(f"wrote {out / 'selection.json'} and {out / 'selected.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
