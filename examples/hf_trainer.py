"""GeNAdaPEFT inside a plain HF ``Trainer``: Newton learning rates and APPI per group, then
masked mode halfway through, all offline (a tiny GPT-2 built from a config, synthetic data).

    python examples/hf_trainer.py                  # 80 Trainer steps of a 2-layer GPT-2, on CPU
    python examples/hf_trainer.py --steps 200 --budget 0.1

The Trainer calls ``optimizer.step()`` with no closure and never shows the optimizer a batch;
``GeNAdaPEFTCallback`` gives the optimizer probe batches of its own at the start of training (a
second, differently shuffled pass over the training set: batches the step has not seen) and
the closure that evaluates them. It also writes ``adapeft/lr/<group>``
and ``adapeft/appi/<group>`` into every log (``trainer.state.log_history``, ``trainer_state.json``,
report_to integrations) and switches to masked mode at ``--mask-at`` of training.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from adapeft_optim import GeNAdaPEFT, describe_groups, group_parameters
from adapeft_optim.integrations.hf import GeNAdaPEFTCallback

VOCAB, SEQ = 128, 32


class Progressions(torch.utils.data.Dataset):
    """Sequences a, a+d, a+2d, ... (mod VOCAB): learnable, so the loss visibly falls."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 8, (n, 1), generator=g)
        self.ids = (start + step * torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps (default: 80)")
    parser.add_argument("--lazy", type=int, default=4, help="probe every LAZY steps (default: 4)")
    parser.add_argument("--budget", type=float, default=0.15, help="fraction of parameters kept (default: 0.15)")
    parser.add_argument("--mask-at", type=float, default=0.5, help="fraction of training before masking (default: 0.5)")
    parser.add_argument("--output-dir", default=None, help="Trainer output dir (default: a temporary one)")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    groups = group_parameters(model)
    for row in describe_groups(groups):
        print(f"{row.name:8s} {row.numel:>8d} params {row.fraction:7.2%}")

    # No closure: the callback adds probe batches and their closure when training starts.
    opt = GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-3), groups=groups, lazy=args.lazy)
    callback = GeNAdaPEFTCallback(mask_at=args.mask_at, budget=args.budget)

    with tempfile.TemporaryDirectory() as tmp:
        training_args = transformers.TrainingArguments(
            output_dir=args.output_dir or tmp,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            learning_rate=1e-3,
            lr_scheduler_type="cosine",
            logging_steps=max(1, args.steps // 8),
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = transformers.Trainer(
            model=model, args=training_args, train_dataset=Progressions(4096), optimizers=(opt, None)
        )
        callback.attach(trainer)  # first in line, so report_to integrations get the adapeft/* values
        trainer.train()

    accepted = sum(r["accepted"] for r in opt.history)
    print(
        f"\n{accepted}/{len(opt.history)} probes accepted; masked mode from step {callback.masked_at}: "
        f"training {list(opt.masked or ())}"
    )
    print(f"{'group':8s} {'APPI':>10s} {'lr now':>10s}")
    for name in opt.names:
        print(f"{name:8s} {opt.appi[name]:10.3g} {opt.lrs[name]:10.3g}")
    last = [e for e in trainer.state.log_history if "loss" in e][-1]
    print(
        f"\nlast log (step {last['step']}): loss {last['loss']:.3f}, "
        + ", ".join(f"{k}={v:.3g}" for k, v in last.items() if k.startswith("adapeft/appi/"))
    )


if __name__ == "__main__":
    main()
