"""MaskSubTrainer's training logs: MaskSub's two terms, loss_main and loss_sub, beside the Trainer's loss."""

from __future__ import annotations

import pytest
import torch
from test_hf_trainer import _args, _data
from test_hf_vit import tiny_hf

from masksub_kernels.training import MaskSub

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's

from masksub_kernels.training.hf_trainer import MaskSubTrainer


def test_a_training_log_holds_masksubs_two_terms(tmp_path):
    # helper-271: the logged training loss is main_weight * main + sub_weight * sub, not a baseline's loss; its terms
    # are logged too, as means over the micro-batches since the last log (here each step's 2 accumulated), evaluations
    # between them not counted. At r = 0 one step's terms are MaskSub's on the step's batch
    options = {"mask_ratio": 0.0, "main_weight": 0.7, "sub_weight": 0.3, "label_smoothing": 0.1}
    model, twin = tiny_hf("ViTForImageClassification").float(), tiny_hf("ViTForImageClassification").float()
    data = _data(16, 0)
    args = _args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=2, logging_steps=1,
                 eval_strategy="steps", eval_steps=1)  # fmt: skip
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=data, eval_dataset=_data(4, 1), masksub=options)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and logs[0]["loss"] != logs[1]["loss"]
    for log in logs:
        assert log["loss"] == pytest.approx(0.7 * log["loss_main"] + 0.3 * log["loss_sub"], rel=1e-5)
    assert all("loss_main" not in h for h in trainer.state.log_history if "loss" not in h)
    one = MaskSubTrainer(model=twin, args=_args(tmp_path / "one", per_device_train_batch_size=8, max_steps=1),
                         train_dataset=data[:8], masksub=options)  # fmt: skip
    one.train()
    (first,) = [h for h in one.state.log_history if "loss" in h]
    batch = torch.stack([d["pixel_values"] for d in data[:8]]), torch.stack([d["labels"] for d in data[:8]])
    want = MaskSub(tiny_hf("ViTForImageClassification").float(), **options)(*batch)
    for key in ("loss_main", "loss_sub"):
        assert first[key] == pytest.approx(float(want[key].detach()), rel=1e-5), key


def test_a_training_logs_terms_are_averaged_as_its_loss(tmp_path, monkeypatch):
    # helper-273: the Trainer's loss is a mean over optimizer steps of each step's mean over its micro-batches (an
    # epoch's short last window too: 10 images, batches of 2, windows of 2, 2 and 1 micro-batches, one log of the 3
    # steps), gathered over the processes by nested_gather where its parallel mode says so; the terms alike
    options = {"mask_ratio": 0.5, "main_weight": 0.7, "sub_weight": 0.3}
    args = _args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=1,
                 max_steps=-1, logging_steps=3)  # fmt: skip
    trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=args,
                             train_dataset=_data(10, 0), masksub=options)  # fmt: skip
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "loss" in h]
    assert log["loss"] == pytest.approx(0.7 * log["loss_main"] + 0.3 * log["loss_sub"], rel=1e-5)

    import transformers.trainer_pt_utils as pt_utils

    def two_ranks(tensor, parallel_mode):  # this rank's means and another's, (3, 5)
        assert parallel_mode == trainer.args.parallel_mode
        return torch.cat([tensor, torch.tensor([[3.0, 5.0]])])

    monkeypatch.setattr(pt_utils, "nested_gather", two_ranks)
    trainer._terms, trainer._terms_count = None, 0
    trainer.args.gradient_accumulation_steps = 2
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 2, raising=False)
    trainer._track_terms({"loss_main": torch.tensor(1.0), "loss_sub": torch.tensor(2.0)})
    trainer._track_terms({"loss_main": torch.tensor(3.0), "loss_sub": torch.tensor(4.0)})
    trainer.log({"loss": 1.0})
    last = trainer.state.log_history[-1]
    assert (last["loss_main"], last["loss_sub"]) == (2.5, 4.0)  # ((1 + 3) / 2 + 3) / 2, ((2 + 4) / 2 + 5) / 2


def test_a_batch_size_retry_logs_no_terms_of_the_failed_try(tmp_path):
    # helper-273: auto_find_batch_size runs the training loop again inside one train() after an out-of-memory
    # error; the failed try's terms (tracked before its backward failed) are not the retry's
    options = {"mask_ratio": 0.5, "main_weight": 0.7, "sub_weight": 0.3}
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, auto_find_batch_size=True)
    trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=args,
                             train_dataset=_data(8, 0), masksub=options)  # fmt: skip
    compute_loss, tries = trainer.compute_loss, []

    def failing_once(*a, **k):
        loss = compute_loss(*a, **k)
        tries.append(1)
        if len(tries) == 1:
            trainer._terms = trainer._terms * 1000  # (what the failed try left, made unmistakable)
            raise RuntimeError("CUDA out of memory.")
        return loss

    trainer.compute_loss = failing_once
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "loss" in h]
    assert len(tries) == 2 and trainer._train_batch_size < 4
    assert log["loss"] == pytest.approx(0.7 * log["loss_main"] + 0.3 * log["loss_sub"], rel=1e-5)


def test_only_a_training_log_takes_the_terms(tmp_path):
    # helper-278: kills `if "loss" in logs` removed from log()
    # an evaluation's log (no `loss`) made between training steps neither gets the terms nor resets them
    trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=_args(tmp_path))
    trainer._track_terms({"loss_main": torch.tensor(1.0), "loss_sub": torch.tensor(2.0)})
    trainer.log({"eval_loss": 1.0})
    assert "loss_main" not in trainer.state.log_history[-1]
    trainer._track_terms({"loss_main": torch.tensor(3.0), "loss_sub": torch.tensor(4.0)})
    trainer.log({"loss": 1.0})
    assert (trainer.state.log_history[-1]["loss_main"], trainer.state.log_history[-1]["loss_sub"]) == (2.0, 3.0)


def test_a_resume_warns_only_of_what_no_load_placed(tmp_path):
    # helper-337: a resume that continued exactly logged the Trainer's "missing keys" (every attention weight, saved
    # under its legacy name and placed by the reload through from_pretrained), its "unexpected keys" (those names)
    # and from_pretrained's load report: read as a failed resume. A key the checkpoint adds is still reported
    import logging

    from safetensors.torch import load_file, save_file

    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=args, train_dataset=_data(8, 0)).train()
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        for extra in (False, True):
            checkpoint = tmp_path / "checkpoint-1"
            if extra:
                tensors = load_file(str(checkpoint / "model.safetensors"))
                save_file({**tensors, "stray.weight": torch.zeros(1)}, str(checkpoint / "model.safetensors"))
            records.clear()
            trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=args,
                                     train_dataset=_data(8, 0))  # fmt: skip
            trainer.train(resume_from_checkpoint=str(checkpoint))
            loads = [m for m in records if "keys in the checkpoint" in m or "LOAD REPORT" in m]
            assert loads == (["There were unexpected keys in the checkpoint model loaded: ['stray.weight']."] if extra
                             else []), loads  # fmt: skip
    finally:
        logging.getLogger("transformers").removeHandler(handler)


def test_the_quieted_reload_leaves_transformers_logging_as_it_was():
    # helper-340's mutation audit: the reload's quiet transformers must hand back the user's verbosity and their
    # choice of progress bars (a resume turned bars back on, or left warnings off for the rest of the run)
    from transformers.utils import logging

    from masksub_kernels.training.hf_trainer import _quiet_transformers

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    try:
        logging.set_verbosity_info()
        logging.disable_progress_bar()
        with _quiet_transformers():
            assert logging.get_verbosity() == logging.ERROR and not logging.is_progress_bar_enabled()
        assert logging.get_verbosity() == logging.INFO and not logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity(verbosity)
        (logging.enable_progress_bar if bars else logging.disable_progress_bar)()


def test_held_back_warnings_keep_the_trainers_tie_weights_step():
    # helper-339: the Trainer ties the weights where a checkpoint lacks exactly the model's _keys_to_ignore_on_save
    # (Marian's); the held-back warnings after the reload dropped that step with the missing keys
    from types import SimpleNamespace

    calls = []
    model = SimpleNamespace(_keys_to_ignore_on_save=["lm_head.weight"], tie_weights=lambda: calls.append("tied"))
    trainer = MaskSubTrainer.__new__(MaskSubTrainer)  # (the method alone: nothing else of a Trainer is read)
    trainer.model = model
    for missing, tied in ((["lm_head.weight"], ["tied"]), (["other.weight"], []), ([], [])):
        calls.clear()
        trainer._deferred_loads = [SimpleNamespace(missing_keys=missing, unexpected_keys=[])]
        trainer._warn_after_reload(set())
        assert calls == tied and trainer._deferred_loads is None


def test_the_best_models_load_and_a_skipped_reload_warn_as_the_resume(tmp_path):
    # helper-341's mutation audit: load_best_model_at_end's load holds back the Trainer's warnings as the resume's
    # does (else every attention weight, placed by the reload, is logged as missing and unexpected); where the
    # reload does not run (a model that is not a PreTrainedModel, a folder without a model file) the held-back
    # warnings are logged as the Trainer's, not dropped
    import logging
    from types import SimpleNamespace

    args = _args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                 load_best_model_at_end=True, metric_for_best_model="loss")  # fmt: skip
    trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=args,
                             train_dataset=_data(8, 0), eval_dataset=_data(4, 1))  # fmt: skip
    trainer.train()
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        trainer._load_best_model()
        assert [m for m in records if "keys in the checkpoint" in m or "LOAD REPORT" in m] == [], records
        (tmp_path / "empty").mkdir()
        for checkpoint, model in ((str(tmp_path / "empty"), trainer.model),
                                  (trainer.state.best_model_checkpoint, torch.nn.Linear(1, 1))):  # fmt: skip
            records.clear()
            trainer._deferred_loads = [SimpleNamespace(missing_keys=[], unexpected_keys=["stray.weight"])]
            trainer._reload_renamed(checkpoint, model)
            assert records == ["There were unexpected keys in the checkpoint model loaded: ['stray.weight']."]
            assert trainer._deferred_loads is None
    finally:
        logging.getLogger("transformers").removeHandler(handler)


def test_a_failed_load_stops_holding_back_the_trainers_warnings(monkeypatch):
    # helper-341's mutation audit: a load that raises (a checkpoint lacking a tensor, an unreadable file) must not
    # leave the warnings held back, every later load's then swallowed without a word
    import transformers

    def fails(*args):
        raise RuntimeError("no such checkpoint")

    trainer = MaskSubTrainer.__new__(MaskSubTrainer)  # (the methods alone: nothing else of a Trainer is read)
    for name, call in (("_load_from_checkpoint", lambda: trainer._load_from_checkpoint("nowhere", model=object())),
                       ("_load_best_model", trainer._load_best_model)):  # fmt: skip
        monkeypatch.setattr(transformers.Trainer, name, fails)
        trainer._deferred_loads = None
        with pytest.raises(RuntimeError, match="no such checkpoint"):
            call()
        assert trainer._deferred_loads is None, name
