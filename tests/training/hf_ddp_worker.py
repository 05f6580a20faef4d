"""Run by test_hf_trainer_ddp.py under ``torchrun --nproc_per_node=2`` (gloo, CPU): MaskSubTrainer under DDP.

For each family given (vit: a tiny transformers ViT; swin: a tiny transformers Swin, whose mask token is the model's
own; mlm: a tiny BERT masked LM), in fp64: STEPS optimizer steps of SGD, ACCUM micro-batches of B rows per rank and
step, a checkpoint after each, then an evaluation on every rank and save_model; then a second run, resumed from the
first checkpoint. Each rank records what MaskSub's forward was given in training (the batch and the mask seed) and
counts its gradient all-reduces per optimizer step (a communication hook on the Trainer's DDP module), and writes
OUT_DIR/FAMILY-RANK.pt: {'params' (after training), 'calls' [(batch, seed)] in order, 'allreduces' [per step],
'metrics' (evaluate's), 'log' (the Trainer's log history), 'wrapped' (the type of the module the Trainer trained),
'resumed' (the resumed run's params)}.
"""

import os
import sys

import torch
import torch.distributed as dist
import transformers
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from masksub_kernels.training.hf_trainer import MaskSubTrainer

STEPS, ACCUM, B, EVAL = 2, 2, 2, 6
OPTIONS = {"vit": {"mask_ratio": 0.5, "label_smoothing": 0.1}, "swin": {"mask_ratio": 0.5}, "mlm": {"mask_ratio": 0.25}}


def model_and_data(family: str, rows: int, seed: int):
    """The family's tiny fp64 model (the same on every rank) and ``rows`` samples of ``seed``."""
    if family in ("vit", "swin"):
        from test_hf_swin import tiny_swin
        from test_hf_vit import tiny_hf

        size = 32 if family == "vit" else 64
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(rows, 3, size, size, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 5, (rows,), generator=generator)
        model = tiny_hf("ViTForImageClassification") if family == "vit" else tiny_swin("SwinForImageClassification")
        return model, [{"pixel_values": x, "labels": y} for x, y in zip(images, labels)]
    from test_mlm import make_batch, tiny_bert

    batch = make_batch(batch=rows, seed=seed)
    return tiny_bert().double().train(), [{key: value[i] for key, value in batch.items()} for i in range(rows)]


class CountingTrainer(MaskSubTrainer):
    """MaskSubTrainer whose training module's gradient all-reduces are counted."""

    allreduces = 0

    def _wrap_model(self, model, training=True, dataloader=None):
        wrapped = super()._wrap_model(model, training, dataloader)
        if training and isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):

            def counting(state, bucket):
                type(self).allreduces += 1
                return default_hooks.allreduce_hook(state, bucket)

            wrapped.register_comm_hook(None, counting)
        return wrapped


class PerStep(transformers.TrainerCallback):
    def __init__(self):
        self.counts = []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(CountingTrainer.allreduces - sum(self.counts))


def arguments(out_dir: str) -> transformers.TrainingArguments:
    settings = dict(output_dir=out_dir, per_device_train_batch_size=B, per_device_eval_batch_size=2,
                    gradient_accumulation_steps=ACCUM, max_steps=STEPS, learning_rate=0.1, optim="sgd",
                    lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], save_strategy="steps",
                    save_steps=1, use_cpu=True, ddp_backend="gloo", ddp_bucket_cap_mb=1000, logging_steps=1,
                    disable_tqdm=True, seed=0, data_seed=0)  # fmt: skip
    return transformers.TrainingArguments(**settings)  # (one bucket: one all-reduce per synchronised backward)


def run(out_dir: str, family: str) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # (the Trainer starts the process group)
    model, train = model_and_data(family, STEPS * ACCUM * B * world, seed=0)
    _, evaluation = model_and_data(family, EVAL, seed=1)
    args = arguments(os.path.join(out_dir, family))
    per_step = PerStep()
    CountingTrainer.allreduces = 0
    trainer = CountingTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                              masksub=OPTIONS[family], callbacks=[per_step])  # fmt: skip
    calls, forward = [], trainer.masksub.forward

    def recording(batch, target=None, *, seed=None, branch="joint"):
        if trainer.masksub.in_training:
            kept = {k: v.clone() for k, v in batch.items()} if family == "mlm" else (batch.clone(), target.clone())
            calls.append((kept, seed))
        return forward(batch, target, seed=seed, branch=branch)

    trainer.masksub.forward = recording
    trainer.train()
    wrapped = type(trainer.model_wrapped).__name__
    metrics = trainer.evaluate()
    trainer.save_model(os.path.join(out_dir, family, "saved"))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {"params": params, "calls": calls, "allreduces": per_step.counts, "metrics": metrics,
             "log": trainer.state.log_history, "wrapped": wrapped}  # fmt: skip
    again, _ = model_and_data(family, 1, seed=0)
    resumed = MaskSubTrainer(model=again, args=arguments(os.path.join(out_dir, family + "-resumed")),
                             train_dataset=train, masksub=OPTIONS[family])  # fmt: skip
    resumed.train(resume_from_checkpoint=os.path.join(out_dir, family, "checkpoint-1"))
    state["resumed"] = {n: p.detach().clone() for n, p in again.named_parameters()}
    torch.save(state, os.path.join(out_dir, f"{family}-{rank}.pt"))
    dist.barrier()


if __name__ == "__main__":
    out_dir, families = sys.argv[1], sys.argv[2:]
    for family in families:
        run(out_dir, family)
    dist.barrier()
    dist.destroy_process_group()
