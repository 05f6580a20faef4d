"""Layer-wise learning-rate decay for Hugging Face models: hf_layer_decay.py and MaskSubTrainer(layer_decay=...)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_hf_swin import tiny_swin
from test_hf_trainer import _args, _data
from test_hf_vit import tiny_hf

from masksub_kernels.training.hf_layer_decay import check_layer_decay, hf_layer_ids, split_groups_by_layer

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's

from masksub_kernels.training.hf_trainer import MaskSubTrainer  # noqa: E402


def _tiny_bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32)  # fmt: skip
    return transformers.BertForMaskedLM(config)


def test_layers_are_the_stem_the_blocks_in_order_and_the_head():
    # the MAE / BEiT numbering: the stem 0, block i i + 1, everything after the last block L + 1
    ids, depth = hf_layer_ids(tiny_hf("ViTForImageClassification"))
    assert depth == 2
    want = {"vit.embeddings.cls_token": 0, "vit.embeddings.patch_embeddings.projection.weight": 0,
            "vit.layers.0.mlp.fc1.weight": 1, "vit.layers.1.attention.q_proj.weight": 2, "vit.layernorm.weight": 3,
            "classifier.bias": 3}  # fmt: skip
    assert {name: ids[name] for name in want} == want
    # CLIP's pre-norm sits between its embeddings and blocks: the stem's (timm's norm_pre)
    ids, depth = hf_layer_ids(tiny_hf("CLIPForImageClassification"))
    assert (depth, ids["vision_model.pre_layrnorm.weight"], ids["vision_model.post_layernorm.bias"]) == (2, 0, 3)
    # Swin: the blocks of every stage, numbered across the stages; a stage's patch merging after its blocks takes
    # its last block's layer
    ids, depth = hf_layer_ids(tiny_swin("SwinForImageClassification", depths=[2, 1]))
    assert depth == 3
    assert [ids[n] for n in ("swin.embeddings.norm.weight", "swin.encoder.layers.0.blocks.0.layernorm_before.weight",
                             "swin.encoder.layers.0.blocks.1.layernorm_before.weight",
                             "swin.encoder.layers.0.downsample.reduction.weight",
                             "swin.encoder.layers.1.blocks.0.layernorm_before.weight", "swin.layernorm.weight",
                             "classifier.weight")] == [0, 1, 2, 2, 3, 4, 4]  # fmt: skip
    # a masked LM: the tied decoder is the word embeddings (one parameter, the stem's), its head L + 1
    ids, depth = hf_layer_ids(_tiny_bert())
    assert "cls.predictions.decoder.weight" not in ids and ids["bert.embeddings.word_embeddings.weight"] == 0
    assert (depth, ids["bert.encoder.layer.1.output.dense.weight"], ids["cls.predictions.transform.dense.weight"]) == (
        2, 2, 3)  # fmt: skip


def test_the_trainer_trains_each_layer_at_its_rate(tmp_path):
    model = tiny_hf("ViTForImageClassification").float()
    args = _args(tmp_path, optim="adamw_torch", learning_rate=0.1, weight_decay=0.05, lr_scheduler_type="linear",
                 max_steps=2)  # fmt: skip
    trainer = MaskSubTrainer(model=model, args=args, train_dataset=_data(8, 0), layer_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    ids, depth = hf_layer_ids(model)
    groups = trainer.optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = set(trainer.get_decay_parameter_names(model))
    seen = set()
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["lr_scale"] == 0.5 ** (depth + 1 - ids[name]), name
            assert group["initial_lr"] == pytest.approx(0.1 * group["lr_scale"]), name  # the schedule's base
            assert group["weight_decay"] == (0.05 if name in decayed else 0.0), name  # the Trainer's choice kept
    assert seen == {n for n, p in model.named_parameters() if p.requires_grad}  # each parameter once
    assert groups[0]["lr_scale"] == 1.0  # the head's first: the Trainer logs the first group's rate
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged[0] == pytest.approx(0.1)  # the linear schedule's first step: the rate itself
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_the_swin_mask_token_trains_at_the_heads_rate(tmp_path):
    # MaskSub's token sits in the embeddings (the stem: d ** (L + 1) of the rate), but it is new at fine-tuning, as
    # the training command's wrapper parameters, which train at the full rate
    model = tiny_swin("SwinForImageClassification").float()
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, weight_decay=0.5), train_dataset=_data(8, 0, size=64),
                             layer_decay=0.5)  # fmt: skip
    trainer.create_optimizer()
    token = model.swin.embeddings.mask_token
    (group,) = [g for g in trainer.optimizer.param_groups if any(p is token for p in g["params"])]
    assert (group["lr"], group["lr_scale"], group["weight_decay"]) == (0.1, 1.0, 0.0)
    (stem,) = [g for g in trainer.optimizer.param_groups
               if any(p is model.swin.embeddings.patch_embeddings.projection.weight for p in g["params"])]  # fmt: skip
    assert stem["lr_scale"] == 0.5**3  # two blocks


def test_a_resumed_layer_decay_run_is_the_uninterrupted_one(tmp_path):
    # the checkpoint's optimizer state holds the split groups: the resumed Trainer builds the same split to load it
    args = dict(max_steps=4, save_strategy="steps", save_steps=2, optim="adamw_torch", lr_scheduler_type="linear",
                learning_rate=0.05, weight_decay=0.1)  # fmt: skip
    data, runs = _data(16, 0), []
    for name in ("whole", "resumed"):
        model = tiny_hf("ViTForImageClassification").float()
        trainer = MaskSubTrainer(model=model, args=_args(tmp_path / name, **args), train_dataset=data, layer_decay=0.7)
        if name == "resumed":
            shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / name / "checkpoint-2")
        trainer.train(resume_from_checkpoint=name == "resumed")
        runs.append(model)
    for (name, p), q in zip(runs[0].named_parameters(), runs[1].parameters()):
        assert torch.equal(p, q), name


def test_bad_settings_are_refused(tmp_path):
    for bad, error in ((0.0, ValueError), (1.5, ValueError), (float("nan"), ValueError), (True, TypeError),
                       ("0.65", TypeError)):  # fmt: skip
        with pytest.raises(error, match="layer_decay must be"):
            check_layer_decay(bad)
    assert check_layer_decay(1) == 1.0
    assert check_layer_decay(np.float32(0.5)) == 0.5  # NumPy's floats are numbers (helper-247)
    # two towers (CLIPModel): their blocks would interleave in one numbering (helper-247)
    tiny = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    config = transformers.CLIPConfig(text_config={**tiny, "vocab_size": 50},
                                     vision_config={**tiny, "image_size": 32, "patch_size": 8})  # fmt: skip
    towers = transformers.CLIPModel(config)
    with pytest.raises(ValueError, match=r"one stack of blocks; CLIPModel has block lists in no one list of stages"):
        hf_layer_ids(towers)
    model = tiny_hf("ViTForImageClassification").float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match=r"one was given in optimizers=: split its groups with .*split_groups_by_layer"
    ):
        MaskSubTrainer(model=model, args=_args(tmp_path), optimizers=(optimizer, None), layer_decay=0.65)
    with pytest.raises(ValueError, match=r"an nn.ModuleList named layer / layers / blocks; Sequential has none"):
        hf_layer_ids(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    # the split itself: a parameter outside the model, and an optimizer that has stepped
    with pytest.raises(ValueError, match=r"a parameter of shape \(3,\) that is not the model's"):
        split_groups_by_layer(torch.optim.SGD([*model.parameters(), torch.nn.Parameter(torch.zeros(3))], lr=1), model,
                              0.5)  # fmt: skip
    model(torch.randn(1, 3, 32, 32)).logits.sum().backward()
    stepped = torch.optim.Adam(model.parameters(), lr=0.1)
    stepped.step()
    with pytest.raises(ValueError, match="the optimizer has taken steps"):
        split_groups_by_layer(stepped, model, 0.5)
    scheduled = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.LambdaLR(scheduled, lambda step: 1.0)  # it keeps the groups it saw (helper-251)
    with pytest.raises(ValueError, match="split them before building the scheduler"):
        split_groups_by_layer(scheduled, model, 0.5)
    # a hand-built optimizer split by hand: every group keeps its settings, at its layer's rate
    optimizer = torch.optim.SGD([{"params": model.classifier.parameters(), "momentum": 0.9},
                                 {"params": model.vit.parameters(), "momentum": 0.0}], lr=0.2)  # fmt: skip
    split_groups_by_layer(optimizer, model, 0.5)
    assert [(g["lr"], g["momentum"], len(g["params"])) for g in optimizer.param_groups][:3] == [
        (0.2, 0.9, 2), (0.2, 0.0, 2), (0.1, 0.0, 16)]  # fmt: skip


# helper-250's mutation audit of the day's code: each test names the mutant it kills
# kills hf_layer_decay.py hf_layer_ids `name.startswith(block + ".")` -> `name.startswith(block)` (M14): a ViT-B's
# blocks 10 and 11 start with "layers.1", so they took block 1's layer (the tests' models had 2 or 3 blocks)
def test_blocks_past_the_tenth_take_their_own_layers():

    ids, depth = hf_layer_ids(tiny_hf("ViTForImageClassification", num_hidden_layers=12))
    assert depth == 12
    names = ("vit.layers.1.mlp.fc1.weight", "vit.layers.10.mlp.fc1.weight", "vit.layers.11.mlp.fc2.bias",
             "vit.layernorm.weight", "classifier.weight")  # fmt: skip
    assert [ids[n] for n in names] == [2, 11, 12, 13, 13]


# kills hf_layer_decay.py _block_prefixes: the lists' `and any(True for _ in module.parameters())` dropped (M5: a
# parameterless list named blocks beside the real one refused the model as two towers), the blocks'
# `if any(True for _ in child.parameters())` dropped (M11: a parameterless entry counted as a block, one layer
# more), the stages' `all(...)` -> `any(...)` (M8: an encoder's stages and a decoder's blocks numbered as one
# stack)
def test_block_lists_are_those_holding_parameters_in_one_stack():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, 2)
            self.layers = nn.ModuleList([nn.Linear(2, 2), nn.Identity(), nn.Linear(2, 2)])  # Identity: no block
            self.blocks = nn.ModuleList([nn.Dropout(), nn.GELU()])  # no parameters: no block list
            self.head = nn.Linear(2, 2)

    ids, depth = hf_layer_ids(Net())
    assert depth == 2
    assert [ids[n] for n in ("embed.weight", "layers.0.bias", "layers.2.weight", "head.bias")] == [0, 1, 2, 3]

    def stage():
        holder = nn.Module()
        holder.blocks = nn.ModuleList([nn.Linear(2, 2)])
        return holder

    towers = nn.Module()  # a hierarchical encoder's stages (one stack) and a decoder's blocks (another)
    towers.encoder = nn.Module()
    towers.encoder.stages = nn.ModuleList([stage(), stage()])
    towers.decoder = nn.Module()
    towers.decoder.layers = nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="one stack of blocks; Module has block lists in no one list of stages"):
        hf_layer_ids(towers)


# kills hf_trainer.py create_optimizer `built = self.optimizer is None` -> `built = True` (M21): a second call (the
# Trainer's own in train(), after the caller built the optimizer to inspect it) split the split groups again: each
# group's lr scaled twice, its lr_scale recorded once
def test_an_optimizer_built_before_train_is_split_once(tmp_path):

    model = tiny_hf("ViTForImageClassification").float()
    trainer = MaskSubTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_data(4, 0),
                             layer_decay=0.5)  # fmt: skip
    trainer.create_optimizer()
    trainer.train()
    ids, depth = hf_layer_ids(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert group["lr_scale"] == 0.5 ** (depth + 1 - ids[names[id(p)]]), names[id(p)]
            assert group["lr"] == pytest.approx(0.1 * group["lr_scale"]), names[id(p)]  # the constant schedule's


# kills hf_trainer.py __init__ `hf_layer_ids(self.model)` dropped (M25): a model without block lists (transformers'
# ResNet) was taken, to fail only when train() built the optimizer
def test_a_model_without_block_lists_is_refused_when_the_trainer_is_built(tmp_path):

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    resnet = transformers.ResNetForImageClassification(config)
    with pytest.raises(ValueError, match=r"layers / blocks; ResNetForImageClassification has none"):
        MaskSubTrainer(model=resnet, args=_args(tmp_path), layer_decay=0.65)


# helper-338's mutation audit of hf_layer_decay.py


# kills hf_layer_decay.py _block_prefixes' innermost lists `other.startswith(name + ".")` -> `other.startswith(name)`
# (another list whose name merely begins with this one's: `layer` beside `layers`): two stacks of blocks side by
# side are refused, not numbered as the `layers` stack alone with the `layer` stack's blocks in the stem
def test_sibling_block_lists_named_alike_are_two_stacks():
    from torch import nn

    net = nn.Module()
    net.layer = nn.ModuleList([nn.Linear(2, 2)])
    net.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    with pytest.raises(ValueError, match=r"one stack of blocks; Module has block lists in no one list of stages"):
        hf_layer_ids(net)


# kills hf_layer_decay.py _block_prefixes `max(stages, key=len)` -> `min(stages, key=len)`: of the lists holding
# every block, the innermost is the list of stages; a parameter after the last block outside it (a norm beside
# the stages, inside an outer list) is the head's (L + 1), not the last block's
def test_the_list_of_stages_is_the_innermost_holding_every_block():
    from torch import nn

    def stage():
        holder = nn.Module()
        holder.blocks = nn.ModuleList([nn.Linear(2, 2)])
        return holder

    group = nn.Module()
    group.stages = nn.ModuleList([stage(), stage()])
    group.norm = nn.LayerNorm(2)
    net = nn.Module()
    net.outer = nn.ModuleList([group])
    ids, depth = hf_layer_ids(net)
    names = ("outer.0.stages.0.blocks.0.weight", "outer.0.stages.1.blocks.0.bias", "outer.0.norm.weight")
    assert (depth, *[ids[n] for n in names]) == (2, 1, 2, 3)
