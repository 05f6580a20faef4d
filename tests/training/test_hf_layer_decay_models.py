"""hf_layer_decay.py on transformers models it was not written against (helper-260): each trainable parameter in one
group, the rates monotone along the forward pass, the head at the full rate; refusals where no one stack exists."""

from __future__ import annotations

import pytest
import torch

from masksub_kernels.training.hf_layer_decay import hf_layer_ids, split_groups_by_layer

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
TEXT = dict(vocab_size=50, **TINY)


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
    ],
)  # fmt: skip
def test_models_with_several_stacks_are_refused(model_class, config, lists):
    model = getattr(transformers, model_class)(config)
    with pytest.raises(
        ValueError, match=rf"one stack of blocks; {model_class} has block lists in no one list.*{lists}"
    ):
        hf_layer_ids(model)
