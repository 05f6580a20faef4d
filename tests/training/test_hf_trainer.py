"""MaskSubTrainer (training/hf_trainer.py): Hugging Face's Trainer with the MaskSub loss, on a tiny ViT."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from test_hf_swin import tiny_swin
from test_hf_vit import tiny_hf

import masksub_kernels as mk
from masksub_kernels.training import MaskSub

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's

from masksub_kernels.training.hf_trainer import MaskSubTrainer  # noqa: E402


def _data(n: int, seed: int, size: int = 32) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, 5, (n,), generator=generator)
    return [{"pixel_values": image, "labels": label} for image, label in zip(images, labels)]


def _args(tmp_path, **changes):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=0.1,
                    optim="sgd", lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True,
                    logging_steps=1, disable_tqdm=True, seed=0, data_seed=0)  # fmt: skip
    return transformers.TrainingArguments(**{**settings, **changes})


def test_train_evaluate_save_and_load(tmp_path):
    model = tiny_hf("ViTForImageClassification").float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kept = []
    model.vit.layers[0].register_forward_pre_hook(lambda m, args: kept.append(args[0].shape[1]))
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(16, 0), eval_dataset=_data(8, 1),
                             masksub={"mask_ratio": 0.5})  # fmt: skip
    assert trainer.masksub.family == "vit"
    trainer.train()
    assert 9 in kept and 17 in kept  # the sub-branch's class token + 8 of 16 patches; the main branch's 17
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n != "vit.embeddings.mask_token")
    # evaluation: the model only, its cross-entropy (the MaskSub wrapper follows the model's eval mode)
    seen = []
    trainer.compute_metrics = lambda prediction: seen.append(prediction) or {"n": len(prediction.label_ids)}
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        batch = torch.stack([d["pixel_values"] for d in _data(8, 1)]), torch.stack([d["labels"] for d in _data(8, 1)])
        logits = model(batch[0]).logits
        want = torch.nn.functional.cross_entropy(logits, batch[1])
    assert metrics["eval_loss"] == pytest.approx(float(want), rel=1e-5) and metrics["eval_n"] == 8
    # compute_metrics gets the model's logits and the labels (helper-110: nothing checked them)
    torch.testing.assert_close(torch.as_tensor(seen[0].predictions), logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.as_tensor(seen[0].label_ids), batch[1])
    trainer.save_model(str(tmp_path / "saved"))
    loaded = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / "saved")).eval()
    torch.testing.assert_close(loaded(batch[0]).logits, model(batch[0]).logits, rtol=0, atol=0)


def test_gradient_accumulation_averages_as_one_batch(tmp_path):
    # helper-109: the Trainer took MaskSub's mean for a sum (the model's forward takes **kwargs) and did not divide
    # it by the accumulation steps: gradients twice too large at 2 steps. At r = 0 the sub-branch is the main one,
    # so 2 micro-batches of 4 must give the step that 1 batch of 8 gives
    weights = {}
    for size, steps in ((8, 1), (4, 2)):
        model = tiny_hf("ViTForImageClassification").float()
        args = _args(
            tmp_path / f"{size}",
            per_device_train_batch_size=size,
            gradient_accumulation_steps=steps,
            max_steps=1,
            max_grad_norm=0.0,
        )  # fmt: skip  (no clipping: it would hide a factor of 2)
        MaskSubTrainer(model=model, args=args, train_dataset=_data(8, 0), masksub={"mask_ratio": 0.0}).train()
        weights[size] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, value in weights[8].items():
        torch.testing.assert_close(weights[4][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_a_compiled_model_trains_compiled_and_is_saved_eager(tmp_path):
    # helper-110: a compiled model given to the Trainer lost its batches' columns (the filter read the compiled
    # wrapper's forward(*args, **kwargs)) and its label names
    model = tiny_hf("ViTForImageClassification").float()
    compiled = torch.compile(model, backend="eager")
    trainer = MaskSubTrainer(
        compiled, _args(tmp_path, max_steps=1), train_dataset=_data(8, 0), eval_dataset=_data(4, 1)
    )
    assert trainer.model is model and trainer.masksub.model is compiled and trainer.label_names == ["labels"]
    trainer.train()
    assert "eval_loss" in trainer.evaluate()


def test_settings_it_cannot_honour_are_refused(tmp_path, monkeypatch):
    model = tiny_hf("ViTForImageClassification").float()
    with pytest.raises(ValueError, match=r"masksub=\{'label_smoothing': 0.1\}"):
        MaskSubTrainer(model=model, args=_args(tmp_path, label_smoothing_factor=0.1), train_dataset=_data(4, 0))
    with pytest.raises(ValueError, match=r"compute_loss_func is the Trainer's own loss, .* masksub=\{...\}"):
        # helper-224: taken by the Trainer and never called (MaskSub's loss replaces the Trainer's)
        MaskSubTrainer(model=model, args=_args(tmp_path), compute_loss_func=lambda outputs, labels, **_: 0.0)
    with pytest.raises(ValueError, match=r"give MaskSubTrainer torch.compile\(model\) instead"):
        MaskSubTrainer(model=model, args=_args(tmp_path, torch_compile=True, torch_compile_backend="eager"))
    with monkeypatch.context() as env:  # accelerate launch --dynamo_backend's, its config's (helper-276)
        env.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
        with pytest.raises(ValueError, match=r"accelerate's dynamo backend\) compiles the model the Trainer calls"):
            MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(4, 0))
    # several processes: DistributedDataParallel only (test_hf_trainer_ddp.py); here accelerate's state is one
    # process's, as under DeepSpeed, FSDP or tensor parallelism it is not DDP's
    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(RuntimeError, match="with DistributedDataParallel only, not"):
        MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(4, 0))
    # reentrant checkpointing hands DDP each gradient twice (MaskSub's two runs of the model in one forward)
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "multi_device", property(lambda self: True))
    checkpointing = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}
    with pytest.raises(RuntimeError, match="takes gradient checkpointing without use_reentrant=True"):
        MaskSubTrainer(model=model, args=_args(tmp_path, **checkpointing), train_dataset=_data(4, 0))
    MaskSubTrainer(model=model, args=_args(tmp_path, **checkpointing, ddp_static_graph=True))  # (its way out)
    monkeypatch.setattr(transformers.TrainingArguments, "n_gpu", property(lambda self: 2))  # its nn.DataParallel
    with pytest.raises(RuntimeError, match="MaskSubTrainer runs on one device"):
        MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(4, 0))
    assert isinstance(MaskSub(model), MaskSub)  # the model is untouched by the refusals
    monkeypatch.undo()
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(4, 0))
    with pytest.raises(ValueError, match=r"needs batches with 'pixel_values' and 'labels'; got \['image', 'label'\]"):
        trainer.compute_loss(model, {"image": torch.zeros(1), "label": torch.zeros(1)})


def test_a_swin_trains_its_mask_token_out_of_weight_decay_and_checkpoints_it(tmp_path):
    # the swin family's mask token is the model's own (embeddings.mask_token, created by MaskSub): the Trainer's
    # optimizer trains it, without weight decay (MaskSub's no_weight_decay), and its checkpoints hold it
    model = tiny_swin("SwinForImageClassification").float()
    args = _args(tmp_path, weight_decay=0.5, save_strategy="steps", save_steps=2, optim="adamw_torch")
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=_data(8, 0, size=64))
    token = model.swin.embeddings.mask_token
    before = token.detach().clone()
    decayed = trainer.get_decay_parameter_names(model)
    assert "swin.embeddings.mask_token" not in decayed and "classifier.weight" in decayed
    trainer.train()
    assert not torch.equal(token, before)
    (group,) = [g for g in trainer.optimizer.param_groups if any(p is token for p in g["params"])]
    assert group["weight_decay"] == 0.0
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    torch.testing.assert_close(saved["swin.embeddings.mask_token"], token.detach(), rtol=0, atol=0)
    # a resumed run gets the trained token back (MaskSub made the slot before the Trainer loads the checkpoint)
    again = tiny_swin("SwinForImageClassification").float()
    resumed = MaskSubTrainer(model=again, args=_args(tmp_path, max_steps=2), train_dataset=_data(8, 0, size=64))
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    torch.testing.assert_close(again.swin.embeddings.mask_token, token, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_a_resumed_run_is_the_uninterrupted_one(tmp_path, family):
    # helper-154: transformers 5 saves a ViT's / Swin's attention weights under their legacy names and the Trainer's
    # resume loaded them non-strictly without renaming them back: most weights stayed at their initialisation
    make, size = (lambda: tiny_hf("ViTForImageClassification").float(), 32) if family == "vit" else (
        lambda: tiny_swin("SwinForImageClassification").float(), 64)  # fmt: skip
    args = dict(max_steps=4, save_strategy="steps", save_steps=2, optim="adamw_torch", lr_scheduler_type="linear",
                learning_rate=0.05, weight_decay=0.1)  # fmt: skip
    data, runs = _data(16, 0, size=size), []
    for name in ("whole", "resumed"):
        model = make()
        trainer = MaskSubTrainer(model=model, args=_args(tmp_path / name, **args), train_dataset=data)
        if name == "resumed":  # a run stopped after its checkpoint at step 2
            shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / name / "checkpoint-2")
        trainer.train(resume_from_checkpoint=name == "resumed")
        runs.append((model, [h["loss"] for h in trainer.state.log_history if "loss" in h]))
    (whole, losses), (resumed, again) = runs
    assert again == losses  # (the resumed log: the checkpoint's first two steps, then its own)
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    # a tensor the checkpoint does not hold is an error, not a silently fresh weight
    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "whole" / "checkpoint-2" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(checkpoint)).items() if k != "classifier.bias"}, str(checkpoint))
    trainer = MaskSubTrainer(model=make(), args=_args(tmp_path / "broken", **args), train_dataset=data)
    with pytest.raises(RuntimeError, match=r"does not hold 1 of the model's tensors: \['classifier.bias'\]"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))


@pytest.mark.parametrize("labels", ["absent", "None", "not in label_names"])
def test_predict_without_labels_passes_model_kwargs(tmp_path, labels):
    # helper-111: the Trainer gives label-less batches to model(**inputs), without MaskSub's model_kwargs: a ViT
    # fine-tuned on 64 px images (interpolate_pos_encoding) refused them. Unlabelled as the Trainer decides it
    # (helper-113): no labels, labels None, or label_names that the batch does not all have
    model = tiny_hf("ViTForImageClassification").float()
    masksub = {"model_kwargs": {"interpolate_pos_encoding": True}}
    names = {"label_names": ["labels", "extra"]} if labels == "not in label_names" else {}
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, **names), masksub=masksub)
    unlabelled = [{"pixel_values": d["pixel_values"]} for d in _data(6, 2, size=64)]
    if labels != "absent":
        unlabelled = [{**d, "labels": None if labels == "None" else torch.tensor(1)} for d in unlabelled]
    predictions = trainer.predict(unlabelled).predictions
    model.eval()
    with torch.no_grad():
        images = torch.stack([d["pixel_values"] for d in unlabelled])
        want = model(images, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(torch.as_tensor(predictions), want, rtol=1e-5, atol=1e-6)


def test_optimizers_and_compiled_models_keep_the_swin_token_right(tmp_path):
    # an optimizer given to the Trainer, built before MaskSub created the token, would never train it
    model = tiny_swin("SwinForImageClassification").float()
    early = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not hold MaskSub's mask_token"):
        MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(8, 0, size=64), optimizers=(early, None))
    model = tiny_swin("SwinForImageClassification").float()  # the documented way, on a model of its own:
    MaskSub(model)  # the token made first, an optimizer built now holds it
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(8, 0, size=64),
                             optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))  # fmt: skip
    before = model.swin.embeddings.mask_token.detach().clone()
    trainer.train()
    assert not torch.equal(model.swin.embeddings.mask_token, before)
    # a compiled model: MaskSub names the token under model._orig_mod., the Trainer's names are the eager model's
    compiled = MaskSubTrainer(torch.compile(tiny_swin("SwinForImageClassification").float(), backend="eager"),
                              _args(tmp_path, weight_decay=0.5), train_dataset=_data(8, 0, size=64))  # fmt: skip
    decayed = compiled.get_decay_parameter_names(compiled.model)
    assert "swin.embeddings.mask_token" not in decayed and "classifier.weight" in decayed


def test_masksub_must_be_a_mapping_of_masksubs_options(tmp_path):
    # helper-302: 0.5 gave Python's "argument after ** must be a mapping", a misspelt key a bare unexpected keyword
    model, args = tiny_hf("ViTForImageClassification").float(), _args(tmp_path)
    with pytest.raises(TypeError, match=r"masksub must be a mapping of MaskSub's keyword arguments .* got float 0.5"):
        MaskSubTrainer(model=model, args=args, masksub=0.5)
    with pytest.raises(
        ValueError, match=r"'mask_ration', .* \(did you mean 'mask_ratio'\?\); its options: mask_ratio, loss,"
    ):
        MaskSubTrainer(model=model, args=args, masksub={"mask_ration": 0.5})
    with pytest.raises(ValueError, match=r"masksub has 'model', which is not an option of MaskSub; its options: "):
        MaskSubTrainer(model=model, args=args, masksub={"model": model})
    assert MaskSubTrainer(model=model, args=args, masksub={"sub_weight": 1.0}).masksub.sub_weight == 1.0


def test_a_label_column_reaches_training_and_evaluation_through_the_default_collator(tmp_path):
    # helper-302: docs/training.md said such a column was not found in evaluation without label_names=["labels"];
    # the Trainer's label names are the forward's (["labels"]), its column filter keeps `label`, and transformers'
    # default collator renames it `labels`
    rows = [{"pixel_values": row["pixel_values"], "label": int(row["labels"])} for row in _data(8, 0)]
    model = tiny_hf("ViTForImageClassification").float()
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=rows, eval_dataset=rows)
    assert trainer.label_names == ["labels"] and trainer.train().training_loss > 0
    assert trainer.evaluate()["eval_loss"] > 0


def test_model_init_is_refused(tmp_path):
    # helper-112: the Trainer built a new model from model_init in train(), MaskSub kept the first: nothing trained
    with pytest.raises(ValueError, match="does not take model_init"):
        MaskSubTrainer(model_init=lambda: tiny_hf("ViTForImageClassification").float(), args=_args(tmp_path),
                       train_dataset=_data(4, 0))  # fmt: skip


def test_unlabelled_prediction_runs_without_grad_and_loss_only_runs_nothing(tmp_path):
    # helper-119's mutants: the label-less branch of prediction_step without torch.no_grad (a graph built for every
    # predicted batch) or ignoring prediction_loss_only (logits gathered when only a loss was asked for) passed
    model = tiny_hf("ViTForImageClassification").float().eval()
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path))
    grad_enabled = []
    model.register_forward_hook(lambda module, args, output: grad_enabled.append(torch.is_grad_enabled()))
    batch = {"pixel_values": torch.stack([d["pixel_values"] for d in _data(2, 3)])}
    assert trainer.prediction_step(model, batch, prediction_loss_only=True) == (None, None, None)
    assert grad_enabled == []
    loss, logits, labels = trainer.prediction_step(model, batch, prediction_loss_only=False)
    assert loss is None and labels is None and not logits.requires_grad and grad_enabled == [False]
    torch.testing.assert_close(logits, model(batch["pixel_values"]).logits, rtol=0, atol=0)


def test_a_masked_lm_evaluates_to_its_loss_correct_and_count_per_batch(tmp_path):
    # helper-119: no test ran a masked LM through the Trainer; compute_metrics gets (loss_main, correct, count)
    from test_mlm import make_batch, tiny_bert

    model, batch = tiny_bert(), make_batch(batch=6, seed=1)
    rows = [{key: value[i] for key, value in batch.items()} for i in range(6)]
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, per_device_eval_batch_size=3), eval_dataset=rows,
                             masksub={"mask_ratio": 0.25})  # fmt: skip
    assert trainer.masksub.family == "mlm"
    seen = []
    trainer.compute_metrics = lambda prediction: seen.append(prediction) or {}
    metrics = trainer.evaluate()
    model.eval()
    want = [trainer.masksub({key: value[i : i + 3] for key, value in batch.items()}) for i in (0, 3)]
    assert len(seen) == 1 and len(seen[0].predictions) == 3
    for got, key in zip(seen[0].predictions, ("loss_main", "correct", "count")):
        torch.testing.assert_close(torch.as_tensor(got), torch.stack([w[key] for w in want]), msg=key)
    assert metrics["eval_loss"] == pytest.approx(float(sum(w["loss"] for w in want)) / 2, rel=1e-5)


def test_a_model_whose_masksub_owns_parameters_is_refused(tmp_path):
    # helper-119: a timm Swin's mask token lives in the MaskSub wrapper, which the Trainer's optimizer never sees
    from _models import tiny_swin as timm_swin

    with pytest.raises(ValueError, match="swin family owns parameters that the Trainer would not train"):
        MaskSubTrainer(model=timm_swin(), args=_args(tmp_path), train_dataset=_data(4, 0, size=64))


# kills hf_trainer.py:166 the index's `set(json.load(f)["weight_map"])` -> `None`, and hf_trainer.py:173 the
# pytorch_model.bin branch -> `None`: the resume tests save one small model.safetensors, so a sharded checkpoint (a
# large model's) or a torch one skipped the check that every tensor came back, silently (helper-154's bug again)
def test_saved_keys_reads_sharded_and_torch_checkpoints(tmp_path):
    from safetensors.torch import load_file

    from masksub_kernels.training.hf_trainer import _saved_keys

    model = tiny_hf("ViTForImageClassification").float()
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    shards = [name for name in os.listdir(tmp_path / "sharded") if name.endswith(".safetensors")]
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    want = set().union(*(load_file(str(tmp_path / "sharded" / name)) for name in shards))
    assert _saved_keys(str(tmp_path / "sharded")) == want  # (under the legacy names transformers 5 saves)
    (tmp_path / "torch").mkdir()
    torch.save(model.state_dict(), tmp_path / "torch" / "pytorch_model.bin")
    assert _saved_keys(str(tmp_path / "torch")) == set(model.state_dict())
    assert _saved_keys(str(tmp_path)) is None  # no model file: nothing to check against


# kills hf_trainer.py:151 `or` -> `and` and the removal of hf_trainer.py:137's check: only a batch missing both keys
# was tested, so one with images and no labels (or no images in predict) got a bare KeyError naming neither rule
def test_a_batch_missing_its_images_or_labels_is_refused_by_name(tmp_path):  # helper-202: T16, T18
    model = tiny_hf("ViTForImageClassification").float()
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path))
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'pixel_values' and 'labels'; got \['pixel_values'\]"):
        trainer.compute_loss(model, {"pixel_values": images})
    with pytest.raises(ValueError, match=r"'pixel_values' and 'labels'; got \['labels'\]"):
        trainer.compute_loss(model, {"labels": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"needs batches with 'pixel_values'; got \['image'\]"):
        trainer.prediction_step(model, {"image": images}, prediction_loss_only=False)


# kills hf_trainer.py:153 a fixed seed (`seed=0`) given to the joint step: the Trainer tests check that weights
# change and that a resume repeats the run, which a sub-branch masking the same patches at every step passes too
def test_each_training_step_masks_other_patches(tmp_path, monkeypatch):  # helper-202: T19
    own, kept = mk.random_token_select, []

    def spy(*args, **kwargs):
        out = own(*args, **kwargs)
        kept.append(out[1].clone())
        return out

    monkeypatch.setattr(mk, "random_token_select", spy)  # (hf_vit's TokenDrop reads it from the package per call)
    model = tiny_hf("ViTForImageClassification").float()
    MaskSubTrainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=2),
                   train_dataset=_data(16, 0)).train()  # fmt: skip
    assert len(kept) == 2 and kept[0].shape == (8, 8)  # 8 of 16 patches per image, per step
    assert not torch.equal(kept[0], kept[1])


# kills hf_trainer.py:135 the `self.masksub.family == "mlm" or` dropped: a masked LM's unlabelled batch (predict on
# text without labels) is the Trainer's own business, its model's vocabulary logits; without the family's exception
# it went down the images' path and was refused for lacking 'pixel_values'
def test_a_masked_lm_predicts_unlabelled_text_through_the_trainer(tmp_path):  # helper-202: T14
    from test_mlm import make_batch, tiny_bert

    model, batch = tiny_bert(), make_batch(batch=4, seed=2)
    rows = [{"input_ids": batch["input_ids"][i]} for i in range(4)]
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, per_device_eval_batch_size=4))
    assert trainer.masksub.family == "mlm"
    predictions = trainer.predict(rows).predictions
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(torch.as_tensor(predictions), want, rtol=1e-5, atol=1e-6)


# kills hf_trainer.py:116 the reload's dtype fixed (`dtype = torch.float32`): the resume tests train fp32 models, so
# a checkpoint of an fp64 model read back through from_pretrained at another precision went unseen: its weights,
# which the Trainer's own load had put back exactly, were overwritten rounded
def test_the_resume_reads_the_weights_back_at_the_models_own_precision(tmp_path):  # helper-202: T22
    model = tiny_hf("ViTForImageClassification")  # fp64, initialised in fp32: its weights made fp64's own
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-9)
    model.save_pretrained(str(tmp_path / "checkpoint"))
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    again = tiny_hf("ViTForImageClassification")
    trainer = MaskSubTrainer(model=again, args=_args(tmp_path / "out"))
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint"))
    for name, p in again.named_parameters():
        assert p.dtype == torch.float64 and torch.equal(p, saved[name]), name


# helper-224's third-pass mutation audit of the Hugging Face layer: the Trainer's step is MaskSub's joint loss's (a
# classifier's and a masked LM's), and a resumed Swin checkpoint without the mask token is refused


def _assert_the_step_of(loss: torch.Tensor, trainer, model, twin) -> None:
    """The Trainer logged ``loss`` (computed on ``twin``, ``model``'s copy before the step) and took one SGD step of
    its gradient (lr 0.1: _args' learning rate)."""
    loss.backward()
    (logged,) = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged == pytest.approx(float(loss.detach()), rel=1e-5)
    with torch.no_grad():
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            want_p = q - 0.1 * q.grad if q.grad is not None else q
            torch.testing.assert_close(p, want_p, rtol=1e-4, atol=1e-6, msg=name)


# kills hf_trainer.py:154 the loss returned to the Trainer as `out["loss_main"]` (the sub-branch's term dropped: a
# ViT still trains every weight, and the sub-branch still runs), as `2 * out["loss"]` or as
# `out["loss_main"] + out["loss_sub"]` (the halves unweighted): the Trainer tests compared runs with runs (accumulated
# with one batch, resumed with whole), which scale alike, and checked only that weights changed; and the masksub
# options that weigh the terms (main_weight, sub_weight, label_smoothing) were never given to a Trainer. At r = 0
# the sub-branch is the main one, so one SGD step must be the step of MaskSub's joint loss computed by hand
def test_the_trainers_step_is_the_step_of_masksubs_joint_loss(tmp_path):
    model, twin = tiny_hf("ViTForImageClassification").float(), tiny_hf("ViTForImageClassification").float()
    data, options = _data(8, 0), {"mask_ratio": 0.0, "main_weight": 0.7, "sub_weight": 0.3, "label_smoothing": 0.1}
    args = _args(tmp_path, per_device_train_batch_size=8, max_steps=1, max_grad_norm=0.0)  # (no clipping)
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=data, masksub=options)
    trainer.train()
    images, labels = torch.stack([d["pixel_values"] for d in data]), torch.stack([d["labels"] for d in data])
    want = MaskSub(twin, **options)(images, labels)
    # 0.7 CE(z, y_0.1) + 0.3 CE(z, softmax(z)): not the main term alone, nor their sum
    _assert_the_step_of(want["loss"], trainer, model, twin)


# kills hf_trainer.py:150 the masked LM's loss returned as `out["loss_main"]` or as `2 * out["loss"]`: a masked LM
# was evaluated through the Trainer (test_a_masked_lm_evaluates_...) but never trained through it, so the mlm
# family's training loss was unchecked. At r = 0 its sub-branch keeps every token: the step is MaskSub's joint loss's
def test_a_masked_lm_trains_through_the_trainer_on_masksubs_joint_loss(tmp_path):
    from test_mlm import make_batch, tiny_bert

    model, twin, batch = tiny_bert(), tiny_bert(), make_batch(batch=4, seed=3)
    rows = [{key: value[i] for key, value in batch.items()} for i in range(4)]
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, max_grad_norm=0.0)
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=rows, masksub={"mask_ratio": 0.0})
    assert trainer.masksub.family == "mlm"
    trainer.train()
    want = MaskSub(twin, mask_ratio=0.0)(batch)  # (a mean over the predicted tokens: the batch's order is immaterial)
    _assert_the_step_of(want["loss"], trainer, model, twin)


# kills hf_trainer.py:118 the `missing` keys of the copy-in dropped (`missing = []`): a Swin's mask token is made by
# MaskSub, so the model that from_pretrained rebuilds from the checkpoint has no such slot and does not report it
# missing; only the copy-in's own missing keys name it. The resume tests strip the classifier's bias (which
# from_pretrained reports), never the token: a checkpoint without it (one written before MaskSub made it) resumed
# with the token silently left at its fresh initialisation
def test_a_resumed_swin_checkpoint_without_the_mask_token_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    args = dict(max_steps=2, save_strategy="steps", save_steps=2)
    data = _data(8, 0, size=64)
    MaskSubTrainer(model=tiny_swin("SwinForImageClassification").float(), args=_args(tmp_path / "run", **args),
                   train_dataset=data).train()  # fmt: skip
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert "swin.embeddings.mask_token" in saved
    save_file(
        {k: v for k, v in saved.items() if k != "swin.embeddings.mask_token"}, str(checkpoint / "model.safetensors")
    )
    trainer = MaskSubTrainer(model=tiny_swin("SwinForImageClassification").float(),
                             args=_args(tmp_path / "again", **args), train_dataset=data)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"does not hold 1 of the model's tensors: \['swin.embeddings.mask_token'\]"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize("mixed", [False, True])
def test_a_masked_lm_trains_under_the_trainers_mixed_precision(tmp_path, mixed):
    # helper-249: accelerate's mixed precision wraps the model's forward, which the mlm family's branches bypass
    # (they call the encoder and the head themselves): with bf16=True both branches ran in fp32. Now the encoder of
    # each branch runs under autocast exactly when the Trainer's mixed precision is on
    from test_mlm import make_batch, tiny_bert

    model, batch = tiny_bert(), make_batch(batch=4, seed=3)
    seen = []
    model.bert.encoder.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    rows = [{key: value[i] for key, value in batch.items()} for i in range(4)]
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, bf16=mixed)
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=rows, masksub={"mask_ratio": 0.5})
    trainer.train()
    assert seen == [mixed, mixed]  # the main branch's encoder call and the sub-branch's
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32


def test_the_best_model_at_end_is_the_best_checkpoint_whole(tmp_path):
    # helper-271: load_best_model_at_end's load, non-strict like the resume's, left the tensors that transformers 5
    # saves under legacy names (32 of this ViT's 40) at the last step's values: a mix of two checkpoints
    model = tiny_hf("ViTForImageClassification").float()
    args = _args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                 load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)  # fmt: skip
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=_data(16, 0), eval_dataset=_data(8, 1))
    trainer.train()
    best = trainer.state.best_model_checkpoint  # the highest eval loss: not the last step's
    assert best is not None and not best.endswith("checkpoint-6")
    for name in (best, str(tmp_path / "checkpoint-6")):
        want = transformers.ViTForImageClassification.from_pretrained(name).state_dict()
        same = [key for key, value in model.state_dict().items() if torch.equal(value, want[key])]
        assert len(same) == (len(want) if name == best else 0), name  # (every tensor trains)
    # a tensor the best checkpoint does not hold is an error, as in a resume
    from safetensors.torch import load_file, save_file

    saved = os.path.join(best, "model.safetensors")
    save_file({k: v for k, v in load_file(saved).items() if k != "classifier.bias"}, saved)
    with pytest.raises(RuntimeError, match=r"does not hold 1 of the model's tensors: \['classifier.bias'\]"):
        trainer._load_best_model()


def test_a_model_whose_forward_takes_no_labels_trains_and_evaluates(tmp_path):
    # helper-271: DeiT's (and LeViT's) WithTeacher forward takes no `labels`, so the Trainer's label_names were [] and
    # its column filter dropped every batch's labels (a "needs ... 'labels'" error; with remove_unused_columns=False
    # an evaluation without eval_loss, compute_metrics never called)
    model = tiny_hf("DeiTForImageClassificationWithTeacher").float()
    seen = []
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_data(8, 0),
                             eval_dataset=_data(4, 1), compute_metrics=lambda p: seen.append(p) or {})  # fmt: skip
    assert trainer.label_names == ["labels"]
    trainer.train()
    metrics = trainer.evaluate()
    model.eval()
    batch = _data(4, 1)
    images, labels = torch.stack([d["pixel_values"] for d in batch]), torch.stack([d["labels"] for d in batch])
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(images).logits, labels)
    assert metrics["eval_loss"] == pytest.approx(float(want), rel=1e-5)
    assert len(seen) == 1 and torch.equal(torch.as_tensor(seen[0].label_ids), labels)
    # label_names of the caller's own that leave `labels` out: the error says why the column is gone
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, max_steps=1, label_names=["label"]),
                             train_dataset=_data(8, 0))  # fmt: skip
    hint = r"\(the model's forward takes no 'labels'.*label_names, here \['label'\].*remove_unused_columns=False\)"
    with pytest.raises(ValueError, match=r"got \['pixel_values'\] " + hint):
        trainer.train()


def test_a_masked_lms_batches_keep_their_special_tokens_mask(tmp_path):
    # helper-271: the Trainer's column filter (remove_unused_columns, on by default) keeps the forward's arguments,
    # and BertForMaskedLM's forward takes no special_tokens_mask: the sub-branch, without it, dropped [CLS] / [SEP]
    # like any token, silently
    from test_mlm import make_batch, tiny_bert

    class Rows(torch.utils.data.Dataset):  # (a datasets.Dataset's columns go through the same list)
        def __init__(self, batch):
            self.batch = batch

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {**{key: value[i] for key, value in self.batch.items()}, "row_id": i}

    batch, seen = make_batch(batch=4, seed=3), []
    trainer = MaskSubTrainer(model=tiny_bert(), args=_args(tmp_path, per_device_train_batch_size=4, max_steps=1),
                             train_dataset=Rows(batch), masksub={"mask_ratio": 0.5})  # fmt: skip
    own = trainer.masksub.forward
    trainer.masksub.forward = lambda inputs, *args, **kwargs: seen.append(dict(inputs)) or own(inputs, *args, **kwargs)
    trainer.train()
    (got,) = seen
    assert sorted(got) == ["input_ids", "labels", "special_tokens_mask"]  # (row_id: the filter's, as before)
    assert torch.equal(got["special_tokens_mask"], batch["special_tokens_mask"])


# kills hf_trainer.py's copy-in taking every tensor from_pretrained returned (`kept = reloaded.state_dict()`,
# helper-278's one survivor): a tensor from_pretrained could not place is one it initialised, and the Trainer's own
# load had already put the checkpoint's value there (no tiny model has such a key: from_pretrained is wrapped here to
# report one, as a model whose file names a tensor only the Trainer's load reads would)
def test_the_reload_keeps_what_from_pretrained_only_initialised(tmp_path, monkeypatch):
    model = tiny_hf("ViTForImageClassification").float()
    args = _args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=_data(4, 0))
    trainer.train()
    trained = {key: value.clone() for key, value in model.state_dict().items()}
    real = type(model).from_pretrained.__func__

    def initialising(cls, *args, **kwargs):
        reloaded, info = real(cls, *args, **kwargs)
        with torch.no_grad():
            reloaded.classifier.weight.fill_(7.0)  # (an initialisation, not the checkpoint's value)
        return reloaded, {**info, "missing_keys": [*info["missing_keys"], "classifier.weight"]}

    monkeypatch.setattr(type(model), "from_pretrained", classmethod(initialising))
    trainer._reload_renamed(str(tmp_path / "checkpoint-1"), model)
    got = model.state_dict()
    assert all(torch.equal(got[key], value) for key, value in trained.items())
