"""The MaskSub wrapper's argument checks and modes, and the family rules (training/wrapper.py, families.py): float
options, model_kwargs' keys, eval at any size, MLM batches without predicted tokens, patch sizes, the fallback
warning, strict image sizes, the grid-size hints. From helper-183's mutation audit (59 mutants, 13 gaps); each test
names the mutant it kills."""

import pytest
import torch
from _models import batch, tiny_swin, tiny_vit
from test_mlm import MASK_ID, VOCAB, tiny_bert

from masksub_kernels.training import MaskSub
from masksub_kernels.training.wrapper import supervised_loss


class _TinyCNN(torch.nn.Module):
    """A conv + head CNN (the pixel family) that takes any image size, with a keyword-only option."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 10)

    def forward(self, images, *, scale=1.0):
        return self.head(self.conv(images).mean((2, 3))) * scale


# ---------------------------------------------------------------------------------------------------------------
# wrapper.py
# ---------------------------------------------------------------------------------------------------------------


def test_a_bool_float_option_is_refused():
    # kills ops/_common.check_real's `isinstance(value, bool) or not isinstance(...)` -> `not isinstance(...)` (True
    # taken as 1.0; the check was wrapper.py's _check_float until helper-294)
    for name in ("mask_ratio", "main_weight", "sub_weight", "label_smoothing"):
        with pytest.raises(TypeError, match=rf"{name} must be a real number \(int or float\), got bool"):
            MaskSub(tiny_vit(), **{name: True if name != "mask_ratio" else False})


def test_label_smoothing_of_one_is_taken():
    # kills check_real's closed range `x <= high` -> `x < high` (label_smoothing=1.0 refused; the ops take eps in
    # [0, 1], docs/semantics.md)
    assert MaskSub(tiny_vit(), label_smoothing=1.0).label_smoothing == 1.0


def test_both_weights_zero_is_refused_and_either_alone_is_taken():
    # helper-302: main_weight=0 and sub_weight=0 were taken (a loss of 0: nothing trains)
    with pytest.raises(ValueError, match="main_weight and sub_weight are both 0"):
        MaskSub(tiny_vit(), main_weight=0, sub_weight=0.0)
    assert MaskSub(tiny_vit(), main_weight=0).sub_weight == MaskSub(tiny_vit(), sub_weight=0).main_weight == 0.5


def test_model_kwargs_with_a_non_string_key_are_a_type_error():
    # kills wrapper.py:222 dropping `or not all(isinstance(key, str) for key in model_kwargs)` (the key then reached
    # the name check: a ValueError, or under a plain **kwargs a TypeError only at the first forward)
    with pytest.raises(TypeError, match="model_kwargs must be a mapping of keyword names to values"):
        MaskSub(_TinyCNN(), model_kwargs={1: 2.0})


def test_eval_mode_takes_images_the_cells_cannot_mask():
    # kills wrapper.py:485 `elif self.in_training and self.family in (...)` -> `elif self.family in (...)`: only a
    # training step masks, so evaluation takes any size the model takes (here 48 px, not a multiple of the 32 px cell)
    torch.manual_seed(0)
    model = _TinyCNN()
    ms = MaskSub(model, family="pixel").eval()
    images = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(ms(images)["logits"], model(images))
    with pytest.raises(ValueError, match="not divisible by the mask cell of 32 pixels"):
        ms.train()(images, torch.tensor([0, 1]))


def test_a_timm_vit_refuses_images_of_another_size_with_the_commands_message():
    # helper-270: MaskSub(timm ViT)(images of another size, y) raised timm's bare AssertionError ("Input height (48)
    # doesn't match model (32).") where masksub-train's check_input_size says what to do; every branch and mode
    from masksub_kernels.training.vit import check_vit_images

    ms, y = MaskSub(tiny_vit()), torch.tensor([0, 1])
    built = r"the model is built for \(32, 32\) images and refuses \(48, 48\) \(a strict image size\): build it with"
    with pytest.raises(ValueError, match=built):
        ms.train()(torch.randn(2, 3, 48, 48), y)
    for branch in ("main", "sub"):
        with pytest.raises(ValueError, match=built):
            ms(torch.randn(2, 3, 48, 48), branch=branch, seed=0)
    with pytest.raises(ValueError, match=built):
        ms.eval()(torch.randn(2, 3, 48, 48))
    dynamic = MaskSub(tiny_vit(dynamic_img_size=True)).train()
    assert dynamic(torch.randn(2, 3, 48, 48), y)["loss"].isfinite()  # a size it takes: no refusal
    with pytest.raises(ValueError, match=r"image size \(36, 36\) is not divisible by the ViT patch size \(8, 8\)"):
        dynamic(torch.randn(2, 3, 36, 36), y)
    check_vit_images(tiny_vit(), torch.empty(2, 3, 32, 32, device="meta"), 0.5)  # shapes only: no value is read


def _tiny_bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(cfg)


def _text_batch():
    ids = torch.randint(5, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return {"input_ids": ids, "special_tokens_mask": torch.isin(ids, torch.tensor([2, 3]))}


def test_mlm_eval_of_a_batch_with_no_predicted_token_is_zero_not_nan():
    # kills wrapper.py:550 `stats["count"].clamp_min(1)` -> `.clamp_min(0)` (0 / 0 = nan when every label is -100)
    ms = MaskSub(_tiny_bert()).eval()
    batch = _text_batch()
    out = ms({**batch, "labels": torch.full_like(batch["input_ids"], -100)})
    assert out["count"].item() == 0
    assert out["loss"].item() == 0.0 and out["loss_main"].item() == 0.0


def test_mlm_main_branch_in_train_mode_needs_no_labels():
    # kills wrapper.py:540 `need_labels=self.in_training and branch != "main"` -> `need_labels=self.in_training`
    # (the main branch reads no labels: only the sub-branch keeps the predicted positions)
    ms = MaskSub(_tiny_bert()).train()
    hidden = ms(_text_batch(), branch="main")
    assert hidden.shape == (2, 8, 16)


# ---------------------------------------------------------------------------------------------------------------
# families.py
# ---------------------------------------------------------------------------------------------------------------


def test_a_float_patch_size_is_taken_as_a_pair():
    # kills families.py:56 `isinstance(size, (int, float))` -> `isinstance(size, int)` (4.0 then indexed: TypeError)
    from masksub_kernels.training import families

    assert families._pair(4.0) == (4, 4)
    assert families._pair(4) == (4, 4) and families._pair((4, 2)) == (4, 2)


def test_a_cnn_gets_the_pixel_family_without_the_fallback_warning(monkeypatch):
    # kills families.py:106 dropping `not is_convolutional(model) and` (every CNN then warned as a fallback)
    import warnings

    from masksub_kernels.training import families

    monkeypatch.setattr(families, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MaskSub(_TinyCNN()).family == "pixel"


def test_a_patch_embedding_without_strict_img_size_is_not_taken_as_strict():
    # kills families.py:174 `getattr(embed, "strict_img_size", False)` -> default True (a model whose patch embedding
    # records its img_size but has no strict flag, e.g. XCiT's ConvPatchEmbed on the pixel fallback, was refused
    # every size but the built one)
    from masksub_kernels.training import families

    model = torch.nn.Module()
    model.patch_embed = torch.nn.Module()
    model.patch_embed.img_size, model.patch_embed.patch_size = (64, 64), 16
    families.check_input_size("pixel", model, 128, 32, 0.5)  # no refusal: nothing says the size is strict
    model.patch_embed.strict_img_size = True
    with pytest.raises(ValueError, match=r"built for \(64, 64\) images and refuses \(128, 128\)"):
        families.check_input_size("pixel", model, 128, 32, 0.5)


def test_a_swin_size_check_names_the_grid_height_then_width():
    # kills families.py:203 `(img_size[0] // patch[0], img_size[1] // patch[1])` with its two terms swapped (the
    # explicit-size path of check_input_size; the configured-size path is helper-172's S3 test)
    from _models import tiny_swin

    ms = MaskSub(tiny_swin(strict_img_size=False))
    with pytest.raises(ValueError, match="token grid 16 x 12 is not divisible by the mask cell of 8 tokens"):
        ms.check_input_size((64, 48))


def test_no_suggested_cell_size_of_one_pixel():
    # kills families.py:249 `range(2, max(grid) + 1)` -> `range(1, ...)`: 31 x 31 px images have no cell size of 2
    # px or more that divides them, and a 1-pixel "cell" is not suggested
    from masksub_kernels.training import families

    with pytest.raises(ValueError, match="another size: no cell size divides 31 x 31 into 2 to 8192 cells"):
        families.check_input_size("pixel", torch.nn.Conv2d(3, 3, 3), 31, 32, 0.5)


def test_a_suggested_cell_size_may_give_exactly_max_tokens_cells():
    # kills families.py:250 `<= MAX_TOKENS` -> `< MAX_TOKENS`: 24576 x 3 px in cells of 3 is 8192 x 1 = MAX_TOKENS
    # cells, which the grid masks take (the only cell size >= 2 dividing both sides)
    from masksub_kernels.ops._common import MAX_TOKENS
    from masksub_kernels.training import families

    assert MAX_TOKENS == 8192
    with pytest.raises(ValueError, match=r"or cell_size=3$"):
        families.check_input_size("pixel", torch.nn.Conv2d(3, 3, 3), (24576, 3), 2, 0.5)


def test_a_grid_of_too_few_cells_gets_a_size_and_a_cell_size_that_keep_one():
    # (test_train_cli_errors.py::test_cnn_and_swin_at_the_digits_default_size_get_a_hint kills these too, by a CLI run)
    # kills families.py:266 `math.ceil(math.sqrt(needed))` -> `int(math.sqrt(needed))` (r = 0.5 needs 2 cells: the
    # hint said 32 x 32 px, the very size refused) and families.py:267 `range(cell_size - 1, 0, -1)` ->
    # `range(1, cell_size)` (the suggested cell size became 1 px instead of the largest that works, 16)
    from masksub_kernels.training import families

    with pytest.raises(ValueError, match=r"use images of 64 x 64 pixels or more, or cell_size=16$"):
        families.check_input_size("pixel", torch.nn.Conv2d(3, 3, 3), 32, 32, 0.5)
    families.check_input_size("pixel", torch.nn.Conv2d(3, 3, 3), 64, 32, 0.5)  # the size it names is taken
    families.check_input_size("pixel", torch.nn.Conv2d(3, 3, 3), 32, 16, 0.5)  # and so is the cell size


def test_a_swin_grid_of_too_few_cells_names_an_image_size_in_pixels():
    # kills families.py:270 `{side * cell_size * patch} x` -> `{side * cell_size} x` (the pixel family's patch is 1,
    # so only a Swin sees it): an 8 x 8 token grid of 4-px patches, one cell of 8 tokens, needs 2 x 2 cells = 64 px
    from masksub_kernels.training import families

    with pytest.raises(ValueError, match=r"keeps none of the 1 mask cell\(s\) of 8 tokens that fit 32 x 32 images "
                       r".* use images of 64 x 64 pixels or more, or cell_size=4$"):  # fmt: skip
        families.check_swin_cells((8, 8), (4, 4), 8, 0.5)


# helper-206's second-pass mutation audit of wrapper.py, engine.py and schedules.py' train step
# kills wrapper.py:496 `self.main_criterion(logits, target)` -> `supervised_loss(logits, target)` in eval mode:
# the evaluation loss is the main criterion of this wrapper (its BCE, threshold and label smoothing), as in training;
# test_eval_mode_just_runs_the_model checks only the default CE without smoothing
def test_eval_loss_is_the_wrappers_main_criterion():
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit(), loss="bce", target_threshold=0.0, label_smoothing=0.1).eval()
    images, labels = batch("vit", dtype=torch.float32)
    out = ms(images, labels)
    want = supervised_loss(out["logits"], labels, mode="bce", label_smoothing=0.1, target_threshold=0.0)
    torch.testing.assert_close(out["loss"], want, rtol=0, atol=0)
    torch.testing.assert_close(out["loss_main"], want, rtol=0, atol=0)


# kills wrapper.py:193 dropping `or mask_token_id is not None` (an image model's mask_token_id was accepted and never
# used: the refusals try sub_fill and chunk_rows only), and wrapper.py:188 `self._mlm = self.chunk_rows = None` ->
# `self._mlm = None` (an image family's repr raised AttributeError) or `...; self.chunk_rows = 0` ("chunk_rows=0")
def test_image_families_refuse_mask_token_id_and_have_no_chunk_rows():
    with pytest.raises(ValueError, match="options of the mlm family; this model is vit"):
        MaskSub(tiny_vit(), mask_token_id=4)
    ms = MaskSub(tiny_vit())
    assert ms.chunk_rows is None and "chunk_rows" not in repr(ms)


# checks the value of the config's default id (no test read it; a pad_token_id read is killed by
# test_refuses_bad_options already), and kills mlm.py's range `0 <=` -> `1 <=` (id 0 refused) or dropped (-1
# accepted), and dropping the bool / int checks (True, 4.0 accepted)
def test_the_mask_token_id_defaults_to_the_configs_and_is_an_int_in_the_vocabulary():
    assert MaskSub(tiny_bert(mask_token_id=MASK_ID), sub_fill="mask").mask_token_id == MASK_ID
    assert MaskSub(tiny_bert(), sub_fill="mask", mask_token_id=0).mask_token_id == 0
    for bad in (-1, True, 4.0):
        with pytest.raises(
            ValueError, match=rf"mask_token_id must be an int in \[0, vocab size {VOCAB}\), got {bad!r}"
        ):
            MaskSub(tiny_bert(), sub_fill="mask", mask_token_id=bad)


def test_a_distilled_deit_in_distilled_training_is_told_why():
    # helper-288: timm's distilled DeiT returns its two heads' logits in distilled training: a bare TypeError before
    from timm.models.deit import VisionTransformerDistilled

    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    model.set_distilled_training(True)
    images, target = batch("vit", dtype=torch.float32)
    hint = r"returned tuple \(a timm distilled model .* model\.set_distilled_training\(False\); or return the logits"
    hint += r" tensor \(wrap the model to return out\[0\]\)\)$"  # (helper-316: any (logits, aux) tuple)
    with pytest.raises(TypeError, match=hint):
        MaskSub(model).train_step(images, target, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_vits_patch_dropout_counts_in_the_kept_tokens():
    # helper-288: timm's patch dropout runs before the sub-branch's selection; the check at construction ignored it,
    # and the op refused mid-run with "0 of 1 tokens" on a model of 4 patches
    with pytest.raises(ValueError, match=r"patch_drop_rate=0\.75\) keeps 1 of its 4 patch tokens"):
        MaskSub(tiny_vit(img_size=16, patch_drop_rate=0.75))
    MaskSub(tiny_vit(img_size=16, patch_drop_rate=0.5))  # 2 of 4 left, 1 kept


def test_a_strict_swin_fed_another_size_is_told_of_strict_img_size():
    # helper-288: the hint named dynamic_img_size (which timm's Swin takes as of 1.0.31, as strict_img_size=False:
    # the one both take)
    with pytest.raises(ValueError, match=r"or strict_img_size=False where the model has it$"):
        MaskSub(tiny_swin()).check_input_size(96)


def test_an_evas_patch_dropout_is_refused_as_such():
    # helper-289: the count of a ViT's patch dropout ran before the Eva check, so an Eva was told its rate kept too
    # few tokens (as if a lower rate would do) before check_eva's refusal of any rate
    from timm.models.eva import Eva

    eva = Eva(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5, patch_drop_rate=0.75)
    with pytest.raises(ValueError, match="needs patch_drop_rate=0"):
        MaskSub(eva)
