"""hf_layer_decay.py on transformers models it was not written against (helper-260): each trainable parameter in one
group, the rates monotone along the forward pass, the head at the full rate; refusals where no one stack exists."""

from __future__ import annotations

import pytest
import torch

from masksub_kernels.training.hf_layer_decay import hf_layer_ids, split_groups_by_layer

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
TEXT = dict(vocab_size=50, **TINY)
T5 = dict(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, num_labels=3)


def _vision(**changes):
    return dict(TINY, image_size=32, patch_size=8, **changes)


def _swin(**changes):
    return dict(image_size=32, patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[1, 2], window_size=4, **changes)


# (model class, config class, config, the head's parameters, the input)
MODELS = {
    "deit-distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", _vision(num_labels=3),
                       ("cls_classifier.weight", "distillation_classifier.bias"), "image"),
    "beit": ("BeitForImageClassification", "BeitConfig", _vision(num_labels=3, use_relative_position_bias=True,
                                                                 layer_scale_init_value=0.1),
             ("beit.pooler.layernorm.weight", "classifier.weight"), "image"),
    "data2vec-vision": ("Data2VecVisionForImageClassification", "Data2VecVisionConfig", _vision(num_labels=3),
                        ("classifier.bias",), "image"),
    "swinv2": ("Swinv2ForImageClassification", "Swinv2Config", _swin(num_labels=3), ("classifier.weight",), "image"),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(num_stages=2, hidden_sizes=[8, 16], depths=[2, 1], num_labels=3), ("classifier.weight",),
                 "image"),
    "mobilevit": ("MobileViTForImageClassification", "MobileViTConfig",
                  dict(image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8] * 6 + [16], num_labels=3),
                  ("classifier.weight",), "image"),
    "clip-vision": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", _vision(), ("visual_projection.weight",),
                    "image"),
    "bert-pooler": ("BertForSequenceClassification", "BertConfig", TEXT, ("bert.pooler.dense.weight",
                                                                           "classifier.weight"), "text"),
    # the classifier registered before the backbone (helper-260: by registration order, the stem's rate)
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig", TEXT,
                    ("classifier.dense.weight", "classifier.out_proj.bias"), "text"),
    "t5-encoder": ("T5ForTokenClassification", "T5Config", T5, ("transformer.encoder.final_layer_norm.weight",
                                                                "classifier.weight"), "text"),
}  # fmt: skip


def _build(key):
    model_class, config_class, config, head, kind = MODELS[key]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()
    inputs = {"pixel_values": torch.randn(1, 3, 32, 32)} if kind == "image" else {"input_ids": torch.tensor([[3, 4]])}
    return model, head, inputs


def _forward_order(model, inputs) -> list[torch.nn.Parameter]:
    """The model's parameters in the order its forward first reaches their modules."""
    order, hooks = [], []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            hooks.append(module.register_forward_pre_hook(lambda m, a, own=own: order.extend(own)))
    with torch.no_grad():
        model(**inputs)
    for hook in hooks:
        hook.remove()
    seen, firsts = set(), []
    for p in order:
        if id(p) not in seen:
            seen.add(id(p))
            firsts.append(p)
    return firsts


@pytest.mark.parametrize("key", list(MODELS))
def test_the_groups_along_the_forward_pass(key):
    model, head, inputs = _build(key)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    split_groups_by_layer(optimizer, model, 0.5)
    scale = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in scale  # in one group
            scale[id(p)] = group["lr"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(scale) == len(trainable) and all(id(p) in scale for p in trainable)
    order = _forward_order(model, inputs)
    assert {id(p) for p in order} == set(scale)  # (the check reaches every parameter)
    rates = [scale[id(p)] for p in order]
    assert rates == sorted(rates), key  # the stem slowest, each later parameter at least as fast
    named = dict(model.named_parameters())
    assert [scale[id(named[name])] for name in head] == [1.0] * len(head)
    _, depth = hf_layer_ids(model)
    assert rates[0] == 0.5 ** (depth + 1)


def test_a_head_registered_before_the_backbone_is_the_head():
    # XLM-RoBERTa's (and CamemBERT's) classifier and MLM head are registered before `roberta`: by registration order
    # they preceded the first block and took the stem's layer, d ** (L + 1) of the rate (helper-260)
    model, _, _ = _build("xlm-roberta")
    ids, depth = hf_layer_ids(model)
    names = ("classifier.dense.weight", "roberta.embeddings.word_embeddings.weight",
             "roberta.encoder.layer.1.output.dense.weight", "classifier.out_proj.bias")  # fmt: skip
    assert [ids[n] for n in names] == [3, 0, 2, 3] and depth == 2
    # the MLM head, and its decoder tied to the word embeddings: one parameter under its first name (the head's),
    # at the lowest rate of its places, the embeddings' (as BERT's, whose embeddings are registered first)
    mlm = transformers.XLMRobertaForMaskedLM(transformers.XLMRobertaConfig(**TEXT))
    assert mlm.lm_head.decoder.weight is mlm.roberta.embeddings.word_embeddings.weight
    ids, depth = hf_layer_ids(mlm)
    assert "roberta.embeddings.word_embeddings.weight" not in ids
    names = ("lm_head.decoder.weight", "lm_head.dense.weight", "lm_head.layer_norm.bias", "lm_head.bias",
             "roberta.embeddings.position_embeddings.weight", "roberta.encoder.layer.0.output.dense.bias")  # fmt: skip
    assert [ids[n] for n in names] == [0, 3, 3, 3, 0, 1]


def test_head_rate_names_the_models_parameters():
    model = transformers.BertForMaskedLM(transformers.BertConfig(**TEXT))
    for bad, error in (({"bert.embeddings.mask_tokn"}, ValueError), ("bert.embeddings.word_embeddings.weight",
                                                                      TypeError)):  # fmt: skip
        with pytest.raises(error, match="head_rate"):  # a typo or a bare string: silently the stem's rate before
            split_groups_by_layer(torch.optim.SGD(model.parameters(), lr=1.0), model, 0.5, head_rate=bad)
    # a tied parameter's other name is its name too: the decoder is the word embeddings
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    split_groups_by_layer(optimizer, model, 0.5, head_rate=frozenset({"cls.predictions.decoder.weight"}))
    (group,) = [
        g for g in optimizer.param_groups if any(p is model.cls.predictions.decoder.weight for p in g["params"])
    ]
    assert group["lr_scale"] == 1.0


def test_a_shared_relative_position_bias_trains_at_the_full_rate():
    # BEiT's recipe (unilm beit/optim_factory.py get_num_layer_for_vit: rel_pos_bias at the last layer id, lr * 1):
    # the bias every block reads. Registered before the blocks, it took the stem's rate, d ** (L + 1) (helper-260)
    for prefix, family in (("beit.shared_position_bias", "Beit"),
                           ("data2vec_vision.encoder.relative_position_bias", "Data2VecVision")):  # fmt: skip
        config = getattr(transformers, f"{family}Config")(**_vision(use_shared_relative_position_bias=True))
        ids, depth = hf_layer_ids(getattr(transformers, f"{family}ForImageClassification")(config))
        names = (f"{prefix}.relative_position_bias_table", f"{prefix.split('.')[0]}.embeddings.cls_token")
        assert (depth, *[ids[n] for n in names]) == (2, 3, 0), family
    # a bias inside a block (BEiT's per-block one) is the block's
    config = transformers.BeitConfig(**_vision(use_relative_position_bias=True))
    ids, _ = hf_layer_ids(transformers.BeitModel(config))
    assert ids["layers.1.relative_position_bias.relative_position_bias_table"] == 2


def test_the_stages_after_the_last_block_are_that_blocks():
    # MobileViT: each stage's norm, projection and fusion after its transformer's blocks take its last block's layer;
    # the last stage's took the head's, L + 1 (helper-260); what follows the stages (the 1x1 expansion) is the head's
    model, _, _ = _build("mobilevit")
    ids, depth = hf_layer_ids(model)
    stage = "mobilevit.encoder.layer"
    names = (f"{stage}.3.transformer.layer.3.output.dense.weight", f"{stage}.3.layernorm.weight",
             f"{stage}.3.fusion.convolution.weight", f"{stage}.4.transformer.layer.2.output.dense.weight",
             f"{stage}.4.layernorm.weight", f"{stage}.4.conv_projection.normalization.bias",
             f"{stage}.4.fusion.convolution.weight", "mobilevit.conv_1x1_exp.convolution.weight")  # fmt: skip
    assert (depth, *[ids[n] for n in names]) == (13, 10, 10, 10, 13, 13, 13, 13, 14)
    # the rule: a parameter inside the list of stages after the last block is that block's, one after it the head's
    stage = torch.nn.Module()
    stage.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    net = torch.nn.Module()
    net.stages = torch.nn.ModuleList([stage, torch.nn.LayerNorm(2)])  # a stage without blocks last
    net.norm = torch.nn.LayerNorm(2)
    ids, depth = hf_layer_ids(net)
    assert (depth, ids["stages.0.blocks.0.weight"], ids["stages.1.weight"], ids["norm.weight"]) == (1, 1, 1, 2)


def test_a_t5_blocks_sub_layers_are_not_blocks():
    # T5's blocks are the elements of `block`, each with its sub-layers (attention, MLP) in a list named `layer`:
    # counted as the blocks, they made L twice the model's depth (helper-260)
    model, _, _ = _build("t5-encoder")
    ids, depth = hf_layer_ids(model)
    block = "transformer.encoder.block"
    names = ("transformer.shared.weight", f"{block}.0.layer.0.SelfAttention.q.weight",
             f"{block}.0.layer.1.DenseReluDense.wo.weight", f"{block}.1.layer.1.layer_norm.weight",
             "transformer.encoder.final_layer_norm.weight")  # fmt: skip
    assert (depth, *[ids[n] for n in names]) == (2, 0, 1, 1, 2, 3)


def test_a_funnels_groups_of_blocks_are_not_blocks():
    # Funnel's `blocks` holds one unnamed ModuleList of blocks per pooling stage: the groups were counted as the blocks
    # (L = 2 for 4 blocks: helper-265)
    config = transformers.FunnelConfig(vocab_size=50, block_sizes=[2, 2], d_model=16, n_head=2, d_head=8, d_inner=32)
    ids, depth = hf_layer_ids(transformers.FunnelForSequenceClassification(config))
    blocks = "funnel.encoder.blocks"
    names = ("funnel.embeddings.word_embeddings.weight", f"{blocks}.0.0.attention.q_head.weight",
             f"{blocks}.0.1.ffn.linear_1.weight", f"{blocks}.1.0.attention.q_head.weight",
             f"{blocks}.1.1.ffn.layer_norm.bias", "classifier.linear_out.weight")  # fmt: skip
    assert (depth, *[ids[n] for n in names]) == (4, 0, 1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    "model_class, config, lists",
    [  # a decode head's or neck's own block lists beside the backbone's: no one stack to number
        ("BeitForSemanticSegmentation", transformers.BeitConfig(**{**_vision(num_labels=3), "num_hidden_layers": 4},
                                                                out_indices=[1, 2, 3, 4], pool_scales=[1, 2],
                                                                use_auxiliary_head=False),
         r"\['beit.layers', 'decode_head.psp_modules.blocks'\]"),
        ("DPTForDepthEstimation", transformers.DPTConfig(**_vision(), backbone_out_indices=[0, 1],
                                                         neck_hidden_sizes=[8, 8], fusion_hidden_size=8,
                                                         reassemble_factors=[4, 2]),
         r"\['dpt.encoder.layer', 'neck.reassemble_stage.layers', 'neck.fusion_stage.layers'\]"),
        # an encoder and a decoder (T5's; their blocks' lists of sub-layers named once, by their stack)
        ("T5ForConditionalGeneration", transformers.T5Config(**T5), r"\['encoder.block', 'decoder.block'\]"),
    ],
)  # fmt: skip
def test_models_with_several_stacks_are_refused(model_class, config, lists):
    model = getattr(transformers, model_class)(config)
    with pytest.raises(
        ValueError, match=rf"one stack of blocks; {model_class} has block lists in no one list.*{lists}"
    ):
        hf_layer_ids(model)
