"""MaskSubTrainer's code for several processes, in one process (helper-278's mutation audit): the DDP around
MaskSub that _wrap_model builds, _runner, the ranks' mask seeds, the refused backends, the masked LM's column.
The torchrun of 2 processes itself: test_hf_trainer_ddp.py."""

from __future__ import annotations

import pytest
import torch
from test_hf_trainer import _args, _data
from test_hf_vit import tiny_hf

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from masksub_kernels.training.hf_trainer import MaskSubTrainer  # noqa: E402


def _two_processes(monkeypatch) -> None:
    """The Trainer's arguments say 2 processes, accelerate's state DDP's (as under torchrun), in this one process."""
    from accelerate import Accelerator

    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: 2))
    monkeypatch.setattr(Accelerator, "multi_device", property(lambda self: True))


def test_several_processes_train_one_ddp_around_masksub(tmp_path, monkeypatch):
    # _wrap_model / _runner / _mask_seed without a torchrun: a process group of one (gloo) lets DDP be built here
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from masksub_kernels._philox import new_seed

    _two_processes(monkeypatch)
    monkeypatch.setattr(transformers.TrainingArguments, "process_index", property(lambda self: 3))
    args = _args(tmp_path, ddp_bucket_cap_mb=7, ddp_find_unused_parameters=False, bf16=True)
    trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=args, train_dataset=_data(4, 0))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = trainer._wrap_model(trainer.model)
        assert isinstance(ddp, DistributedDataParallel) and ddp.module is trainer.masksub
        # the Trainer's DDP settings (accelerate's ddp_handler)
        assert ddp.bucket_bytes_cap == 7 * 1024 * 1024 and ddp.find_unused_parameters is False
        # the Hugging Face model prepared as one process prepares it (here: accelerate's autocast around its forward)
        assert hasattr(trainer.model, "_original_forward")
        assert trainer._wrap_model(ddp) is ddp  # a later train() keeps it
        # what an earlier evaluate() may leave as model_wrapped (a compiled copy, helper-276): not ours, DDP built
        again = trainer._wrap_model(torch.compile(trainer.model))
        assert isinstance(again, DistributedDataParallel) and again.module is trainer.masksub
        assert trainer._wrap_model(trainer.model, training=False) is trainer.model
        # compute_loss runs the DDP module that is ours, MaskSub past anything else
        assert trainer._runner(ddp) is ddp and trainer._runner(trainer.model) is trainer.masksub
        other = DistributedDataParallel(torch.nn.Linear(2, 2))
        assert trainer._runner(other) is trainer.masksub
    finally:
        dist.destroy_process_group()
    # the mask seed: the generator's draw with the rank folded in; none drawn in evaluation
    trainer.masksub.train()
    torch.manual_seed(5)
    got = trainer._mask_seed()
    torch.manual_seed(5)
    assert got == new_seed() ^ 3
    trainer.masksub.eval()
    state = torch.get_rng_state()
    assert trainer._mask_seed() is None and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp", "parallelism_config", "distributed_loading",
                                     "sagemaker_dp", "sagemaker_mp"])  # fmt: skip
def test_every_backend_that_wraps_or_shards_the_model_is_refused(tmp_path, monkeypatch, backend):
    # each under several processes with accelerate's state DDP's (so only the backend's own check refuses it)
    import transformers.trainer as hf_trainer

    _two_processes(monkeypatch)
    trainer = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=_args(tmp_path))
    trainer._check_distributed()  # (DDP: accepted)
    if backend in ("deepspeed", "fsdp"):
        setattr(trainer, f"is_{backend}_enabled", True)
    elif backend == "parallelism_config":
        monkeypatch.setattr(trainer.args, "parallelism_config", object(), raising=False)
    elif backend == "distributed_loading":
        trainer.is_distributed_loading_by_transformers = True
    else:
        monkeypatch.setattr(hf_trainer, f"is_{backend}_enabled", lambda: True)
    with pytest.raises(RuntimeError, match="with DistributedDataParallel only, not"):
        trainer._check_distributed()


def test_only_a_masked_lm_keeps_special_tokens_mask_once(tmp_path):
    from test_mlm import tiny_bert

    vit = MaskSubTrainer(model=tiny_hf("ViTForImageClassification").float(), args=_args(tmp_path / "vit"))
    vit._set_signature_columns_if_needed()
    assert "special_tokens_mask" not in vit._signature_columns
    mlm = MaskSubTrainer(model=tiny_bert(), args=_args(tmp_path / "mlm"))
    mlm._set_signature_columns_if_needed()
    mlm._set_signature_columns_if_needed()  # (each loader asks again)
    assert mlm._signature_columns.count("special_tokens_mask") == 1
