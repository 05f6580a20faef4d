"""MaskSub training layer: the ``MaskSub`` wrapper, per-family sub-branches (vit, swin, pixel, mlm; timm and
Hugging Face models), DropSub / PathSub, the sequential and joint training-step schedules, and
DistributedDataParallel with one all-reduce per step. ``masksub_kernels.train`` (masksub-train) and
``training.mlm_cli`` (masksub-train-mlm) are the training commands built on it; ``hf_trainer.MaskSubTrainer`` is
Hugging Face's Trainer with the MaskSub loss."""

from .distributed import close_process_group, unwrap_ddp, wrap_ddp
from .families import FAMILIES, check_input_size, resolve_family
from .schedules import SCHEDULES, optimizer_step, train_step
from .variants import sub_drop_path, sub_dropout
from .wrapper import LOSSES, VARIANTS, MaskSub, supervised_loss

__all__ = [
    "FAMILIES",
    "LOSSES",
    "SCHEDULES",
    "VARIANTS",
    "MaskSub",
    "check_input_size",
    "close_process_group",
    "optimizer_step",
    "resolve_family",
    "sub_drop_path",
    "sub_dropout",
    "supervised_loss",
    "train_step",
    "unwrap_ddp",
    "wrap_ddp",
]
