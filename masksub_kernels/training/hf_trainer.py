"""Hugging Face's ``Trainer`` with the MaskSub loss: ``MaskSubTrainer``.

    from transformers import TrainingArguments
    from masksub_kernels.training.hf_trainer import MaskSubTrainer

    trainer = MaskSubTrainer(model=vit, args=TrainingArguments("out", ...), train_dataset=train, eval_dataset=val,
                             masksub={"mask_ratio": 0.5, "label_smoothing": 0.1})
    trainer.train(); trainer.evaluate(); trainer.save_model()      # save_model: the plain Hugging Face model

It is ``Trainer`` with ``compute_loss`` replaced, and with what calling MaskSub from a ``Trainer`` by hand gets
wrong made right:

- The model given to the Trainer is the Hugging Face model itself: what it saves (``config.json``,
  ``model.safetensors``), what ``from_pretrained`` loads back, what ``remove_unused_columns`` reads the batch's
  column names from. ``MaskSub(model, **masksub)`` is built around it (``trainer.masksub``); the families a
  transformers model gets (vit for the ViT-like image classifiers, swin for Swin / SwinV2, pixel for the others,
  mlm for BERT / RoBERTa masked LMs) own no parameter outside the model (Swin's mask token is the model's own
  ``embeddings.mask_token``, created by MaskSub: kept out of weight decay, saved in checkpoints and the saved
  model), so the Trainer's optimizer holds every parameter that trains (one given in ``optimizers``, built before
  MaskSub made that token, is refused).
- Training: the joint schedule, ``ms(pixel_values, labels)`` (one forward of each branch, one backward; the
  sequential ``train_step`` steps an optimizer of its own, which a Trainer owns). The loss is a mean over the batch,
  so the Trainer is told to divide it by its gradient-accumulation steps (``model_accepts_loss_kwargs = False``:
  the model's ``**kwargs`` would make it assume a sum and not divide). The logged ``loss`` is that joint loss (not
  a plain run's training loss); each training log also holds its two terms, ``loss_main`` and ``loss_sub``.
- Evaluation: the Trainer puts the model in eval mode, so the wrapper runs the model only; the loss is the main
  criterion (cross-entropy, or BCE; with MaskSub's label smoothing) and the logits go to ``compute_metrics``. A
  masked LM's evaluation forms no [rows, vocabulary] logits: ``compute_metrics`` gets ``(loss_main, correct,
  count)`` per batch. ``predict`` on images without labels: their logits from MaskSub's model call (with its
  ``model_kwargs``).
- ``torch.compile``: give the Trainer ``torch.compile(model)`` (the Trainer keeps the eager model, MaskSub runs the
  compiled one); ``TrainingArguments.torch_compile`` would compile a model MaskSub never calls, so it is refused.
- Label smoothing is MaskSub's (``masksub={"label_smoothing": ...}``): ``TrainingArguments.label_smoothing_factor``
  acts only in the Trainer's own loss, so it is refused rather than silently ignored.
- Batches: images as ``pixel_values`` [B, C, H, W] and ``labels`` (class ids [B], or probabilities [B, C] from a
  mixup collator); a masked LM takes the batch mapping itself (``input_ids``, ``labels``, ... : the mlm family).
  The Trainer's loaders are its own: with ``dataloader_num_workers=0`` (its default) a dataset's random transforms
  draw from torch's default generator in the main process, from which MaskSub also draws each step's mask seed, so
  a MaskSub run and a plain one of the same seed see other augmentations from the second batch on (masksub-train
  seeds each sample's augmentation apart: data.SeededSamples); with workers, their base seed is drawn from that
  generator at each epoch's start. For paired comparisons, seed the transforms per sample.
- Layer-wise learning-rate decay (MAE / BEiT / FT-CLIP fine-tuning): ``layer_decay=d`` splits the Trainer's
  optimizer groups by block, the head at the full rate and each block below it ``d`` times the one above
  (hf_layer_decay.py); not with an optimizer given in ``optimizers``, whose groups are the caller's.
- ``model_init`` (and so ``hyperparameter_search``) is refused: the Trainer would build a new model in ``train()``
  that the MaskSub built here never calls.
- Several processes (torchrun / accelerate launch; DDP, NCCL or gloo): the model that the Trainer trains is
  DistributedDataParallel around MaskSub (``_wrap_model``: the Trainer's own DDP would wrap the model, whose
  forward MaskSub's branches run past, and leave its gradients unaveraged), built with the Trainer's DDP settings
  (``ddp_find_unused_parameters``, ``ddp_bucket_cap_mb``, ...). It is ``model_wrapped``, and its ``no_sync`` is the
  one the Trainer enters inside an accumulation window: the gradients are averaged once per optimizer step, as one
  process's over the ranks' micro-batches (tested, 2 CPU processes). ``self.model`` stays the Hugging Face model:
  evaluation runs it on every rank (the Trainer gathers), saving is rank 0's. The Trainer seeds every rank's
  generator alike, so the mask seed each rank draws has its rank folded in (masks differ across ranks, as in
  masksub-train). Refused: DeepSpeed, FSDP, tensor / context parallelism (they shard or wrap the model in ways
  MaskSub's branches bypass), and several GPUs in one process (the Trainer's nn.DataParallel would run MaskSub on
  one GPU): a RuntimeError.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import reprlib
from collections.abc import Mapping

import torch

from .._philox import new_seed
from .extras import missing_message
from .hf_layer_decay import check_layer_decay, hf_layer_ids, split_groups_by_layer
from .schedules import check_holds_mask_token
from .wrapper import MaskSub

try:
    from transformers import Trainer
except (ImportError, RuntimeError) as exc:  # transformers' Trainer needs accelerate: its error did not say so
    _MISSING = missing_message("MaskSubTrainer", ("transformers", "accelerate"), "text")
    if _MISSING is None:
        raise
    raise ImportError(_MISSING) from exc

__all__ = ["MaskSubTrainer"]


def _masksub_options(masksub) -> dict:
    """``masksub`` as MaskSub's keyword arguments: a mapping (None: none) of the names MaskSub takes."""
    if masksub is None:
        return {}
    if not isinstance(masksub, Mapping):
        raise TypeError(
            "masksub must be a mapping of MaskSub's keyword arguments (e.g. {'mask_ratio': 0.5}), got "
            f"{type(masksub).__name__} {reprlib.repr(masksub)}"
        )
    parameters = inspect.signature(MaskSub.__init__).parameters.values()
    options = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in masksub:
        if key not in options:
            close = difflib.get_close_matches(str(key), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"masksub has {key!r}, which is not an option of MaskSub{hint}; its options: {', '.join(options)}"
            )
    return dict(masksub)


class MaskSubTrainer(Trainer):
    """``transformers.Trainer`` whose loss is MaskSub's (module docstring). ``masksub``: a mapping of keyword
    arguments of ``MaskSub`` (mask_ratio, loss, label_smoothing, ...; another name is refused); ``layer_decay``:
    layer-wise learning-rate decay of the Trainer's optimizer (hf_layer_decay.py; None: off); the rest are the
    Trainer's own."""

    def __init__(
        self, model=None, *args, masksub: dict | None = None, layer_decay: float | None = None, **kwargs
    ) -> None:
        masksub = _masksub_options(masksub)  # (before the Trainer's setup: a typo is told at once)
        self.layer_decay = None if layer_decay is None else check_layer_decay(layer_decay)
        # a torch.compile-d model: the Trainer gets the eager one (its column filter, label names and saving read
        # the model's class and forward signature), MaskSub the compiled one (whose branches it then runs compiled)
        compiled = model if hasattr(model, "_orig_mod") else None
        super().__init__(compiled._orig_mod if compiled is not None else model, *args, **kwargs)
        if self.model_init is not None:  # train() would build a new model that MaskSub, built here, never calls
            raise ValueError(
                "MaskSubTrainer does not take model_init (nor hyperparameter_search, which needs it): the Trainer "
                "builds a new model in train() while MaskSub wraps the one built here, so nothing would train; "
                "build the model and pass it as model="
            )
        dynamo = getattr(getattr(self.accelerator.state, "dynamo_plugin", None), "backend", None)
        if self.args.torch_compile or str(getattr(dynamo, "value", dynamo or "NO")).upper() != "NO":
            # (accelerate's dynamo backend, from accelerate launch's --dynamo_backend, its config or the
            # environment, compiles the model as torch_compile does)
            raise ValueError(
                "TrainingArguments.torch_compile (or accelerate's dynamo backend) compiles the model the Trainer "
                "calls, not the one MaskSub calls: give MaskSubTrainer torch.compile(model) instead"
            )
        if self.args.n_gpu > 1:  # the Trainer's nn.DataParallel: MaskSub would run the bare model on one GPU
            raise RuntimeError(
                f"MaskSubTrainer runs on one device ({self.args.n_gpu} GPUs visible to one process): set "
                "CUDA_VISIBLE_DEVICES to one GPU"
            )
        if self.args.world_size > 1:
            self._check_distributed()
        if self.args.label_smoothing_factor:
            raise ValueError(
                "TrainingArguments.label_smoothing_factor acts only in the Trainer's own loss; pass MaskSub's: "
                f"masksub={{'label_smoothing': {self.args.label_smoothing_factor}}}"
            )
        if getattr(self, "compute_loss_func", None) is not None:  # (else taken and never called)
            raise ValueError(
                "compute_loss_func is the Trainer's own loss, which MaskSubTrainer replaces by MaskSub's: pass its "
                "options as masksub={...} (main_weight, sub_weight, label_smoothing, ...), or subclass and override "
                "compute_loss"
            )
        if self.args.label_names is None and "labels" not in self.label_names:
            # a forward without `labels` (DeiT's and LeViT's WithTeacher): the Trainer's label names would be [], its
            # column filter would drop the batches' labels and its evaluation would treat them as unlabelled
            self.label_names = ["labels"]
        self.masksub = MaskSub(compiled if compiled is not None else self.model, **masksub)
        if any(True for _ in self.masksub.parameters(recurse=False)):  # Swin's mask token: not a transformers family
            raise ValueError(f"MaskSub's {self.masksub.family} family owns parameters that the Trainer would not train")
        if self.optimizer is not None:  # optimizers=(optimizer, scheduler): one built before MaskSub made Swin's token
            check_holds_mask_token(self.masksub, self.optimizer)
        if self.layer_decay is not None:
            if self.optimizer is not None:
                raise ValueError(
                    "layer_decay splits the groups of the optimizer the Trainer builds; one was given in optimizers="
                    ": split its groups with masksub_kernels.training.hf_layer_decay.split_groups_by_layer (a Swin's "
                    "mask token in head_rate) before building its scheduler instead"
                )
            hf_layer_ids(self.model)  # a model without block lists: refused now, not at train()
        # MaskSub's loss is a mean over the micro-batch: the Trainer divides it by its accumulation steps when told
        # that it is not already scaled (transformers >= 5.x reads loss_is_scaled_for_ga first, earlier ones the
        # model's **kwargs, which a transformers model's forward has)
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._terms, self._terms_count = None, 0  # (training's loss_main, loss_sub since the last log: _track_terms)
        self._deferred_loads = None  # (the Trainer's load warnings, held back while a reload is to follow)

    def _inner_training_loop(self, *args, **kwargs):
        """The Trainer's training loop, its logged terms counted from its first step (a resume's too; a retry of
        ``auto_find_batch_size`` after an out-of-memory error starts the loop again: not the failed try's terms)."""
        self._terms, self._terms_count = None, 0
        return super()._inner_training_loop(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's; a training log (the one with ``loss``) also gets MaskSub's two terms, ``loss_main`` and
        ``loss_sub``, averaged as the Trainer averages its ``loss``: over the optimizer steps since the last log, each
        step's mean over its micro-batches (a short last window of an epoch included), and over the processes where
        the Trainer gathers its loss (``nested_gather``); read from the device once, where the Trainer reads its
        own. (``loss`` is ``main_weight * loss_main + sub_weight * loss_sub``, but for the Trainer's
        ``logging_nan_inf_filter``, which replaces a non-finite step's loss: the terms keep it.) Under several
        processes the gather is a collective, as the Trainer's own: a log with ``loss`` made on one rank alone (not
        the Trainer's, which logs on every rank) would wait for the others."""
        if "loss" in logs and self._terms is not None:
            from transformers.trainer_pt_utils import nested_gather

            terms = nested_gather((self._terms / self._terms_count)[None], self.args.parallel_mode).mean(0)
            main, sub = terms.tolist()
            logs = {**logs, "loss_main": main, "loss_sub": sub}
            self._terms, self._terms_count = None, 0
        super().log(logs, start_time)

    def _track_terms(self, out: dict) -> None:
        """Training: adds the micro-batch's (loss_main, loss_sub), divided by its window's micro-batches (the
        Trainer's ``current_gradient_accumulation_steps``), to their sum since the last log, on the device (no host
        sync per step); the count is the optimizer steps."""
        if "loss_sub" in out:  # (training's outputs only: evaluation's are the main criterion's)
            share = 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
            terms = torch.stack([out["loss_main"], out["loss_sub"]]).detach().float() * share
            self._terms = terms if self._terms is None else self._terms + terms
            self._terms_count += share

    def _check_distributed(self) -> None:
        """Several processes: DistributedDataParallel only (accelerate's multi-GPU or multi-CPU), which
        ``_wrap_model`` puts around MaskSub; DeepSpeed, FSDP and tensor / context parallelism shard or wrap the model
        in ways MaskSub's branches do not go through."""
        from accelerate.utils import DistributedType
        from transformers.trainer import is_sagemaker_dp_enabled, is_sagemaker_mp_enabled

        accelerator = self.accelerator
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        sharded = sharded or getattr(self.args, "parallelism_config", None) is not None
        sharded = sharded or getattr(self, "is_distributed_loading_by_transformers", False)
        sharded = sharded or is_sagemaker_dp_enabled() or is_sagemaker_mp_enabled()  # (their own wrappers)
        if sharded or not (accelerator.multi_device or accelerator.distributed_type == DistributedType.MULTI_CPU):
            raise RuntimeError(
                f"MaskSubTrainer runs on several processes ({self.args.world_size} here) with DistributedDataParallel "
                f"only, not {accelerator.distributed_type} (DeepSpeed, FSDP, SageMaker, tensor / context "
                "parallelism): MaskSub's branches would bypass its wrapper"
            )
        checkpointing = self.args.gradient_checkpointing_kwargs
        reentrant = isinstance(checkpointing, dict) and checkpointing.get("use_reentrant", False)
        if self.args.gradient_checkpointing and reentrant and not self.args.ddp_static_graph:
            # MaskSub runs the model twice in one DDP forward: reentrant checkpointing hands DDP each parameter's
            # gradient twice ("Expected to mark a variable ready only once"; the plain Trainer runs it once)
            raise RuntimeError(
                "MaskSubTrainer under several processes takes gradient checkpointing without use_reentrant=True "
                "(transformers' default is use_reentrant=False): MaskSub runs the model twice in one "
                "DistributedDataParallel forward, which reentrant checkpointing breaks; or set ddp_static_graph=True "
                "(gradient_accumulation_steps=1 only: static graphs fail with accumulation, in the plain Trainer too)"
            )

    def _wrap_model(self, model, training: bool = True, dataloader=None):
        """The Trainer's; for training under several processes, DistributedDataParallel around MaskSub (the
        Trainer's own would wrap the model, whose forward MaskSub's branches run past it: its gradients would not be
        averaged). That DDP module is the model the Trainer trains (``model_wrapped``; its ``no_sync`` is the one the
        Trainer enters inside an accumulation window, so the gradients are averaged once per optimizer step), with
        the Trainer's DDP settings (``ddp_find_unused_parameters``, ``ddp_bucket_cap_mb``, ...); ``self.model`` stays
        the Hugging Face model (saving, evaluation), prepared as the one-process run prepares it (its device and
        mixed precision)."""
        from torch.nn.parallel import DistributedDataParallel

        wrapped = super()._wrap_model(model, training, dataloader)
        ours = isinstance(wrapped, DistributedDataParallel) and wrapped.module is self.masksub
        if not training or self.args.world_size <= 1 or ours:  # (ours: a later train() keeps its DDP)
            return wrapped
        # (anything else, the Hugging Face model or a copy of it that an earlier evaluate() left as model_wrapped,
        # is not what the loss goes through: without this DDP no gradient would be averaged)

        self.accelerator.prepare_model(self.model, evaluation_mode=True)
        device, handler = self.accelerator.device, self.accelerator.ddp_handler
        device_ids = None if device.type == "cpu" or device.index is None else [device.index]
        ddp = DistributedDataParallel(self.masksub, device_ids=device_ids, **(handler.to_kwargs() if handler else {}))
        if handler is not None:
            handler.register_comm_hook(ddp)
        return ddp

    def _mask_seed(self) -> int | None:
        """The sub-branch's mask seed: None (MaskSub draws it from torch's default generator) in one process; under
        several, that draw with the rank folded in. The Trainer seeds every rank's generator alike
        (``set_seed(args.seed)``), so each rank would draw the same seed, and its i-th row the same mask as every
        other rank's i-th row (masksub-train seeds each rank apart, as DeiT does)."""
        if self.args.world_size <= 1 or not self.masksub.in_training:  # (evaluation draws nothing: no mask)
            return None
        return new_seed() ^ self.args.process_index

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The Trainer's resume, with the weights read back under the model's own names (``_reload_renamed``)."""
        model = self.model if model is None else model
        self._deferred_loads = []
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            self._reload_renamed(resume_from_checkpoint, model)
        finally:
            self._deferred_loads = None

    def _load_best_model(self) -> None:
        """The Trainer's ``load_best_model_at_end``, with the weights read back under the model's own names
        (``_reload_renamed``): its load is as non-strict as the resume's, so the renamed tensors would keep the last
        step's values, the rest the best checkpoint's."""
        self._deferred_loads = []
        try:
            super()._load_best_model()
            self._reload_renamed(self.state.best_model_checkpoint, self.model)
        finally:
            self._deferred_loads = None

    def _issue_warnings_after_load(self, load_result) -> None:
        """The Trainer's warnings of missing / unexpected keys, held back while ``_reload_renamed`` is to follow:
        it places the tensors saved under legacy names (which the Trainer's load reports as both missing and
        unexpected: every attention weight of a ViT, on a resume that then continues exactly), so only what is
        left unplaced after it is reported (``_warn_after_reload``)."""
        if getattr(self, "_deferred_loads", None) is not None:
            self._deferred_loads.append(load_result)
            return
        super()._issue_warnings_after_load(load_result)

    def _warn_after_reload(self, unplaced: set[str] | None) -> None:
        """The held-back warnings: as the Trainer's where ``_reload_renamed`` did not run (``unplaced`` None), else
        only the checkpoint's keys that neither load placed (none missing: those raise)."""
        from types import SimpleNamespace

        deferred, self._deferred_loads = getattr(self, "_deferred_loads", None) or [], None
        for result in deferred:
            if unplaced is not None:
                ignored = getattr(self.model, "_keys_to_ignore_on_save", None)
                if ignored and set(result.missing_keys) == set(ignored):
                    self.model.tie_weights()  # the Trainer's own step for keys left out of its checkpoints (Marian)
                kept = [key for key in result.unexpected_keys if key in unplaced]
                result = SimpleNamespace(missing_keys=[], unexpected_keys=kept)
            super()._issue_warnings_after_load(result)

    def _reload_renamed(self, checkpoint: str, model) -> None:
        """After the Trainer's load of ``checkpoint``: the weights it could not place read back through
        ``from_pretrained``. transformers 5 saves some under their legacy names (a ViT's
        ``encoder.layer.0.attention.attention.query`` for its ``layers.0.attention.q_proj``) and the Trainer loads
        the file non-strictly without renaming them back, leaving those weights as they were (at their
        initialisation in a resume, at the last step's values for the best model) with one logged warning
        (32 of a tiny ViT's 40 tensors; the plain Trainer alike). ``from_pretrained`` renames them: its
        model's tensors are copied in, the Trainer's load having taken the keys it drops (a Swin's mask token, saved
        under its own name); a tensor that neither gives is an error, not a silently stale weight. Left to the
        Trainer alone: an adapter's checkpoint (a PEFT model, not a ``PreTrainedModel``), a folder without a model
        file, and DeepSpeed's, FSDP's and SageMaker's loads (their own formats and sharded parameters)."""
        from transformers import PreTrainedModel
        from transformers.trainer import is_sagemaker_mp_enabled

        saved = None if self.is_deepspeed_enabled or self.is_fsdp_enabled or is_sagemaker_mp_enabled() else (
            _saved_keys(checkpoint))  # fmt: skip
        if not isinstance(model, PreTrainedModel) or saved is None:
            return self._warn_after_reload(None)
        dtype = next(model.parameters()).dtype
        with _quiet_transformers():  # (its load report would list what the Trainer's load placed as unexpected)
            reloaded, info = type(model).from_pretrained(checkpoint, dtype=dtype, output_loading_info=True)
        fresh = set(info["missing_keys"])  # (initialised by from_pretrained: the Trainer's load placed those it could)
        kept = {key: value for key, value in reloaded.state_dict().items() if key not in fresh}
        missing = model.load_state_dict(kept, strict=False).missing_keys
        lost = [key for key in dict.fromkeys([*fresh, *missing]) if key not in saved]  # (in neither load)
        if lost:
            raise RuntimeError(
                f"checkpoint {checkpoint!r} does not hold {len(lost)} of the model's tensors: {lost[:5]}"
            )
        self._warn_after_reload(set(info["unexpected_keys"]))

    def _set_signature_columns_if_needed(self) -> None:
        """The Trainer's columns (the model's forward's arguments and the label names) that ``remove_unused_columns``
        keeps; a masked LM's also its ``special_tokens_mask``, which its forward does not take and MaskSub's
        sub-branch reads to keep [CLS] / [SEP] (dropped, the sub-branch would drop them like any token)."""
        super()._set_signature_columns_if_needed()
        masksub = getattr(self, "masksub", None)  # (None: asked for before MaskSub is built)
        if masksub is not None and masksub.family == "mlm" and "special_tokens_mask" not in self._signature_columns:
            self._signature_columns.append("special_tokens_mask")

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with ``layer_decay``, its groups split by layer (hf_layer_decay.py)."""
        built = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if built and self.layer_decay is not None:
            token = frozenset(name for name in self._no_decay_names() if name.endswith("embeddings.mask_token"))
            split_groups_by_layer(self.optimizer, self.model, self.layer_decay, head_rate=token)
        return optimizer

    def get_decay_parameter_names(self, model) -> list[str]:
        """The Trainer's choice, less MaskSub's ``no_weight_decay`` names (a transformers Swin's mask token)."""
        kept_out = set(self._no_decay_names())
        return [name for name in super().get_decay_parameter_names(model) if name not in kept_out]

    def _no_decay_names(self) -> list[str]:
        """MaskSub's ``no_weight_decay`` names as the model's (a transformers Swin's mask token, which MaskSub made)."""
        prefix = "model._orig_mod." if self.masksub.model is not self.masksub.inner_model else "model."
        return [name.removeprefix(prefix) for name in self.masksub.no_weight_decay()]

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """The Trainer's, except for images without labels (``predict`` on unlabelled data), which the Trainer would
        give to ``model(**inputs)``: their logits come from MaskSub's model call, with its ``model_kwargs``."""
        names = self.label_names  # the Trainer's own rule for a labelled batch
        if self.masksub.family == "mlm" or (names and all(inputs.get(name) is not None for name in names)):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if "pixel_values" not in inputs:
            raise ValueError(f"MaskSubTrainer needs batches with 'pixel_values'; got {sorted(inputs)}")
        if prediction_loss_only:
            return None, None, None
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = self.masksub(inputs["pixel_values"], branch="main")
        return None, logits.detach(), None

    def _runner(self, model):
        """What runs MaskSub: the DistributedDataParallel module around it that the Trainer trains (``_wrap_model``),
        else MaskSub itself (one process; evaluation, which the Trainer runs on the model)."""
        from torch.nn.parallel import DistributedDataParallel

        return model if isinstance(model, DistributedDataParallel) and model.module is self.masksub else self.masksub

    def _with_special_tokens_mask(self, inputs):
        """A masked LM's batch without ``special_tokens_mask`` (DataCollatorForLanguageModeling removes it) with it
        rebuilt from the tokenizer given as ``processing_class``: the ids in its ``all_special_ids`` but [UNK] (a
        word of the text, which the sub-branch may drop; always kept, a row of many could hold more kept tokens
        than K), as the collator's own ``get_special_tokens_mask`` marks them otherwise (the [MASK]-replaced
        positions too: harmless, the predicted positions are kept anyway). Without a tokenizer the batch goes as
        it is (MaskSub then warns). The ids' tensor is made once per device: no copy from the host each step."""
        if inputs.get("special_tokens_mask") is not None or not isinstance(inputs.get("input_ids"), torch.Tensor):
            return inputs
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)  # (a processor's tokenizer)
        special_ids = getattr(tokenizer, "all_special_ids", None)
        if not special_ids:
            return inputs
        input_ids = inputs["input_ids"]
        cached = getattr(self, "_special_ids", None)
        if cached is None or cached.device != input_ids.device:
            kept = sorted({int(i) for i in special_ids} - {getattr(tokenizer, "unk_token_id", None)})
            cached = torch.tensor(kept, dtype=input_ids.dtype, device=input_ids.device)
            self._special_ids = cached
        return {**inputs, "special_tokens_mask": torch.isin(input_ids, cached)}

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """MaskSub's joint loss in training; the main criterion and the model's logits in evaluation."""
        if self.masksub.family == "mlm":
            inputs = self._with_special_tokens_mask(inputs)
            # its branches call the encoder and the head past the model's forward, which is all that the Trainer's
            # mixed precision (accelerate's) wraps: without this, bf16=True / fp16=True would train in fp32
            with self.accelerator.autocast():
                out = self._runner(model)(inputs, seed=self._mask_seed())
            self._track_terms(out)
            return (out["loss"], {k: v for k, v in out.items() if k != "loss"}) if return_outputs else out["loss"]
        if "pixel_values" not in inputs or "labels" not in inputs:
            hint = ""
            if "labels" not in inputs and "labels" not in inspect.signature(self.model.forward).parameters:
                hint = (
                    f" (the model's forward takes no 'labels': the Trainer's column filter keeps them only if "
                    f"TrainingArguments.label_names, here {self.label_names}, names them, or with "
                    "remove_unused_columns=False)"
                )
            raise ValueError(
                f"MaskSubTrainer needs batches with 'pixel_values' and 'labels'; got {sorted(inputs)}{hint}"
            )
        out = self._runner(model)(inputs["pixel_values"], inputs["labels"], seed=self._mask_seed())
        self._track_terms(out)
        return (out["loss"], {"logits": out["logits"]}) if return_outputs else out["loss"]


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings and progress bars off (its load report, its "Loading weights" bar), then as they were."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _saved_keys(checkpoint: str) -> set[str] | None:
    """The tensor names a Trainer checkpoint's model file holds (safetensors, or torch's, sharded or not); None
    where it has none of these."""
    import json
    import os

    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(checkpoint, index)):
            with open(os.path.join(checkpoint, index)) as f:
                return set(json.load(f)["weight_map"])
    if os.path.isfile(os.path.join(checkpoint, "model.safetensors")):
        from safetensors import safe_open

        with safe_open(os.path.join(checkpoint, "model.safetensors"), framework="pt") as f:
            return set(f.keys())
    if os.path.isfile(os.path.join(checkpoint, "pytorch_model.bin")):
        return set(torch.load(os.path.join(checkpoint, "pytorch_model.bin"), map_location="meta", weights_only=True))
    return None
