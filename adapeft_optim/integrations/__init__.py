"""GeNAdaPEFT in HF ``Trainer``, ``accelerate`` and DDP loops (design §9, §4.9).

Probes must evaluate batches the step has not seen. :class:`ProbeBatches` draws them from a
dataset with its own shuffling (a second iterator over the training data, or a held-out split)
and :class:`BatchLoss` is the matching closure. :class:`GeNAdaPEFTCallback` gives a Trainer's
optimizer both at the start of training, puts per-group learning rates and APPI into the
Trainer's logs and can switch to masked mode at a step or a fraction of training;
:class:`GeNAdaPEFTFactory` builds the optimizer through ``Trainer(optimizer_cls_and_kwargs=...)``.
:func:`replay_closure` re-runs the model's last training forward: the batch of the gradient,
whose slope is biased (kept for loops that cannot draw a second batch, with a warning).

Example::

    model = GPT2LMHeadModel(config)
    opt = GeNAdaPEFT(torch.optim.AdamW(model.parameters(), lr=1e-4), groups=group_parameters(model))
    trainer = Trainer(model, args, train_dataset=ds, optimizers=(opt, None),
                      callbacks=[GeNAdaPEFTCallback(mask_at=0.5, budget=0.05)])
    trainer.train()   # probes draw their own batches from ds

One module per concern: :mod:`.closures` and :mod:`.factory` need torch alone; :mod:`.hf`
(the Trainer callback) imports transformers, so it is imported from its module,
``from adapeft_optim.integrations.hf import GeNAdaPEFTCallback``
(``pip install 'adapeft-optim[hf]'``).
"""

from .closures import BatchLoss, ProbeBatches, ReplayClosure, replay_closure
from .factory import GeNAdaPEFTFactory, unwrap_optimizer

__all__ = [
    "BatchLoss",
    "GeNAdaPEFTFactory",
    "ProbeBatches",
    "ReplayClosure",
    "replay_closure",
    "unwrap_optimizer",
]
