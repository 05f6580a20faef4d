"""MaskSubTrainer (training/hf_trainer.py): Hugging Face's Trainer with the MaskSub loss, on a tiny ViT."""

from __future__ import annotations

import pytest
import torch
from test_hf_vit import tiny_hf

from masksub_kernels.training import MaskSub

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's

from masksub_kernels.training.hf_trainer import MaskSubTrainer  # noqa: E402


def _data(n: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
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
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        batch = torch.stack([d["pixel_values"] for d in _data(8, 1)]), torch.stack([d["labels"] for d in _data(8, 1)])
        want = torch.nn.functional.cross_entropy(model(batch[0]).logits, batch[1])
    assert metrics["eval_loss"] == pytest.approx(float(want), rel=1e-5)
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


def test_settings_it_cannot_honour_are_refused(tmp_path, monkeypatch):
    model = tiny_hf("ViTForImageClassification").float()
    with pytest.raises(ValueError, match=r"masksub=\{'label_smoothing': 0.1\}"):
        MaskSubTrainer(model=model, args=_args(tmp_path, label_smoothing_factor=0.1), train_dataset=_data(4, 0))
    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(RuntimeError, match="MaskSubTrainer runs in one process"):
        MaskSubTrainer(model=model, args=_args(tmp_path), train_dataset=_data(4, 0))
    assert isinstance(MaskSub(model), MaskSub)  # the model is untouched by the refusals
