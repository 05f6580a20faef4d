"""MaskSub wrapper vs the hand-written step of docs/semantics.md (§8), per family; family detection and its policy."""

import types
import warnings

import pytest
import torch
from _models import (
    BUILDERS,
    assert_grads_close,
    batch,
    grads,
    reference_loss,
    sub_logits_for_seed,
    tiny_swin,
    tiny_vit,
)

import masksub_kernels as mk
from masksub_kernels.training import MaskSub, families, supervised_loss

FAMILY = {"vit": "vit", "deit3": "vit", "mae": "vit", "swin": "swin", "swinv2": "swin", "resnet": "pixel"}
# DeiT-III's recipe is BCE with binarised mixed targets; the others use soft-target CE.
LOSS = {"deit3": ("bce", 0.0)}


def _wrapped(name: str, **kwargs) -> MaskSub:
    torch.manual_seed(0)
    mode, threshold = LOSS.get(name, ("ce", None))
    return MaskSub(BUILDERS[name]().double(), loss=mode, target_threshold=threshold, **kwargs).train()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_joint_step_equals_hand_written_step(name):
    ms = _wrapped(name)
    assert ms.family == FAMILY[name]
    images, target = batch(name, soft=name in ("deit3", "mae"))
    out = ms(images, target, seed=1234)
    out["loss"].backward()
    got = grads(ms)

    ms.zero_grad(set_to_none=True)
    mode, threshold = LOSS.get(name, ("ce", None))
    main = ms.model(images)
    sub = sub_logits_for_seed(name, ms.model, images, 1234, mask_token=ms.mask_token)
    loss, crit_main, crit_sub = reference_loss(main, sub, target, mode, threshold)
    loss.backward()

    torch.testing.assert_close(out["loss"], loss.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["loss_main"], crit_main.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["loss_sub"], crit_sub.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["logits"], main)
    # Every parameter (the Swin mask token included) gets the reference gradient.
    want = grads(ms)
    assert len(want) == len(list(ms.parameters()))
    assert_grads_close(got, want)


@pytest.mark.parametrize("name", ["vit", "swin", "resnet"])
def test_joint_and_sequential_schedules_give_the_same_summed_gradient(name):
    ms = _wrapped(name)
    images, target = batch(name)
    ms(images, target, seed=7)["loss"].backward()
    joint = grads(ms)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)  # the step leaves the weights as they are
    out = ms.train_step(images, target, optimizer, seed=7)
    assert out["stepped"] is True
    assert not any(v.requires_grad for v in out.values() if isinstance(v, torch.Tensor))
    assert_grads_close(grads(ms), joint)


def test_seed_none_draws_from_torch_default_generator():
    ms = _wrapped("vit")
    images, target = batch("vit")
    torch.manual_seed(5)
    first = ms(images, target)["loss_sub"]
    torch.manual_seed(5)
    assert torch.equal(ms(images, target)["loss_sub"], first)
    assert not torch.equal(ms(images, target)["loss_sub"], first)  # the generator moved on: another mask (helper-115)


def test_eval_mode_just_runs_the_model():
    ms = _wrapped("vit").eval()
    images, target = batch("vit")
    out = ms(images)
    assert set(out) == {"logits"}
    torch.testing.assert_close(out["logits"], ms.model(images))
    with_target = ms(images, target)
    assert set(with_target) == {"logits", "loss", "loss_main"}
    torch.testing.assert_close(with_target["loss"], torch.nn.functional.cross_entropy(out["logits"], target).float())


def test_the_mode_is_the_models():
    # helper-109: Hugging Face's Trainer calls model.eval() / model.train() on the model it was given, never on the
    # wrapper, whose own flag decided: its evaluation ran the MaskSub loss, and training after ms.eval() had no sub
    ms = _wrapped("vit")
    images, target = batch("vit")
    ms.model.eval()
    assert not ms.in_training and set(ms(images, target)) == {"logits", "loss", "loss_main"}
    with pytest.raises(RuntimeError, match="needs the model in train mode"):
        ms.train_step(images, target, torch.optim.SGD(ms.parameters(), lr=0.1))
    ms.eval()
    ms.model.train()
    assert ms.in_training and "loss_sub" in ms(images, target)


def test_branch_outputs_and_train_mode_needs_a_target():
    ms = _wrapped("vit")
    images, target = batch("vit")
    torch.testing.assert_close(ms(images, branch="main"), ms.model(images))
    torch.testing.assert_close(ms(images, branch="sub", seed=3), sub_logits_for_seed("vit", ms.model, images, 3))
    with pytest.raises(ValueError, match="needs a target"):
        ms(images)
    with pytest.raises(ValueError, match="branch"):
        ms(images, target, branch="both")


@pytest.mark.parametrize("name", ["vit", "swin", "resnet"])
def test_mask_ratio_sets_the_kept_count(name):
    # the grid families too (helper-115: a ratio read as 1 - r, the official pixel code's inversion, passed at 0.5)
    ms = _wrapped(name, mask_ratio=0.75)
    images, _ = batch(name)
    want = sub_logits_for_seed(name, ms.model, images, 2, mask_token=ms.mask_token, ratio=0.75)
    torch.testing.assert_close(ms.sub_logits(images, seed=2), want)


def test_vit_sub_branch_keeps_timms_patch_dropout():
    # docs/semantics.md §4: the selection follows _pos_embed, patch_drop and norm_pre (helper-115: patch_drop skipped)
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit(patch_drop_rate=0.5).double()).train()
    seen = []
    ms.model.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    ms.sub_logits(batch("vit")[0], seed=1)
    assert seen == [1 + 4]  # the class token + r = 0.5 of the 8 patch tokens that patch dropout keeps


def test_a_grid_of_just_enough_cells_is_taken():
    # r = 0.5 keeps floor(2 * 0.5) = 1 of 2 cells: the fewest that keep one (helper-115: the boundary refused)
    ms = _wrapped("resnet")
    ms.check_input_size((64, 32))
    images, target = batch("resnet")
    assert torch.isfinite(ms(images[..., :32], target, seed=1)["loss"])
    with pytest.raises(ValueError, match=r"keeps none of the 1 mask cell\(s\)"):
        ms.check_input_size((32, 32))


@pytest.mark.parametrize(("ratio", "refused", "taken"), [(0.8, (32, 160), (64, 96)), (0.9, (64, 160), (32, 352))])
def test_the_fewest_cells_follow_the_ops_rounding(ratio, refused, taken):
    # helper-149: 1 - 0.8 = 0.19999999999999996, so int(5 (1 - 0.8)) = 0 cells kept of 5, which ceil(1 / (1 - r))
    # took as enough (the first step failed); 6 keep one. At 0.9: 10 keep 0, 11 keep one.
    ms = _wrapped("resnet", mask_ratio=ratio)
    cells = refused[0] // 32 * (refused[1] // 32)
    with pytest.raises(ValueError, match=rf"keeps none of the {cells} mask cell\(s\) .* needs at least {cells + 1} "):
        ms.check_input_size(refused)
    ms.check_input_size(taken)
    images, target = batch("resnet")
    images = torch.nn.functional.interpolate(images, size=taken)
    assert torch.isfinite(ms(images, target, seed=1)["loss"])


def test_a_timm_swin_batch_the_cells_cannot_mask_is_refused_before_the_main_branch():
    # helper-149: a timm Swin of a non-strict image size took an 80 x 80 batch (20 x 20 tokens, cells of 8): the main
    # forward and train_step's main backward ran, then the sub-branch's op refused it, leaving the main gradient
    torch.manual_seed(0)
    ms = MaskSub(tiny_swin(strict_img_size=False).double()).train()
    images, target = batch("swin")
    images = torch.nn.functional.interpolate(images, size=(80, 80))
    heads = []
    ms.model.head.register_forward_hook(lambda *_: heads.append(1))
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="token grid 20 x 20 is not divisible by the mask cell of 8 tokens"):
        ms.train_step(images, target, optimizer)
    assert heads == [] and all(p.grad is None for p in ms.parameters())


def test_swin_mask_token_gets_gradient_and_no_weight_decay():
    from timm.optim import create_optimizer_v2

    ms = _wrapped("swin")
    assert ms.mask_token.shape == (16,) and 0.01 < ms.mask_token.std() < 0.035  # trunc-normal 0.02 (seed 0: 0.0204)
    images, target = batch("swin")
    ms(images, target, seed=1)["loss"].backward()
    assert ms.mask_token.grad is not None and ms.mask_token.grad.abs().sum() > 0
    assert "mask_token" in ms.no_weight_decay()
    assert "model.layers.0.blocks.0.attn.relative_position_bias_table" in ms.no_weight_decay()
    optimizer = create_optimizer_v2(ms, opt="adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[id(ms.mask_token)] == 0.0
    assert decay_of[id(ms.model.layers[0].blocks[0].attn.relative_position_bias_table)] == 0.0
    assert decay_of[id(ms.model.head.fc.weight)] == 0.05


def test_optimizer_without_the_mask_token_is_refused():
    ms = _wrapped("swin")
    images, target = batch("swin")
    with pytest.raises(ValueError, match="mask_token"):
        ms.train_step(images, target, torch.optim.SGD(ms.model.parameters(), lr=0.1))


def test_vit_no_weight_decay_names_are_prefixed():
    ms = _wrapped("vit")
    assert {"model.cls_token", "model.pos_embed"} <= ms.no_weight_decay()
    assert ms.mask_token is None


class _TinyMlpClassifier(torch.nn.Module):
    """Neither a timm ViT / Swin nor a CNN: gets the pixel-grid fallback."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 64 * 64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_unsupported_model_gets_pixel_fallback_with_one_warning():
    with pytest.warns(UserWarning, match="pixel-grid fallback") as record:
        ms = MaskSub(_TinyMlpClassifier().double())
    assert [w.filename for w in record] == [__file__]  # the user's line (user_warning.warn_user), not the package's
    assert ms.family == "pixel"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskSub(_TinyMlpClassifier())  # once per model class
        MaskSub(_TinyMlpClassifier(), family="pixel")
    images, target = batch("resnet")
    out = ms.train()(images, target, seed=3)
    sub = sub_logits_for_seed("resnet", ms.model, images, 3)
    torch.testing.assert_close(out["loss_sub"], reference_loss(out["logits"], sub, target)[2].float())


class _HfStyleClassifier(_TinyMlpClassifier):
    """Returns an object with .logits, as transformers' image classifiers (ImageClassifierOutput) do."""

    def forward(self, x):
        return types.SimpleNamespace(logits=super().forward(x), loss=None)


class _ShapedClassifier(_TinyMlpClassifier):
    def __init__(self, shape: str):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        logits = super().forward(x)
        return logits.unsqueeze(-1).expand(-1, -1, 2) if self.shape == "[B, C, 2]" else logits.t()


class _TupleClassifier(_TinyMlpClassifier):
    def forward(self, x):
        return (super().forward(x),)


def test_models_returning_an_output_object_give_its_logits():
    ms = MaskSub(_HfStyleClassifier().double(), family="pixel").train()
    images, target = batch("resnet")
    out = ms(images, target, seed=3)
    main = ms.model(images).logits
    sub = sub_logits_for_seed("resnet", lambda x: ms.model(x).logits, images, 3)
    loss, crit_main, crit_sub = reference_loss(main, sub, target)
    torch.testing.assert_close(out["logits"], main)
    torch.testing.assert_close(out["loss"], loss.float())
    torch.testing.assert_close(out["loss_main"], crit_main.float())
    torch.testing.assert_close(out["loss_sub"], crit_sub.float())
    torch.testing.assert_close(ms(images, branch="main"), main)
    torch.testing.assert_close(ms.eval()(images)["logits"], main)
    with pytest.raises(TypeError, match=r"returns logits \[B, C\].*this model returned tuple"):
        MaskSub(_TupleClassifier().double(), family="pixel").train()(images, target)
    for shape in ("[B, C, 2]", "[C, B]"):  # errors about the model's output, not the loss's arguments
        model = _ShapedClassifier(shape).double()
        with pytest.raises(ValueError, match=r"logits as \[B, C\] with B = the images' batch size 4; the model"):
            MaskSub(model, family="pixel").train()(images, target)


def test_a_hugging_face_image_classifier_trains_on_the_pixel_fallback(monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(families, "_WARNED", set())  # once per architecture: whatever warned before in this process
    config = transformers.BeitConfig(  # relative position biases: not hf_vit's (ViT's own test: test_hf_vit.py)
        image_size=64, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=10, use_relative_position_bias=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BeitForImageClassification(config).double()
    with pytest.warns(UserWarning, match="pixel-grid fallback"):
        ms = MaskSub(model).train()
    images, target = batch("resnet")
    out = ms(images, target, seed=5)
    sub = sub_logits_for_seed("resnet", lambda x: model(x).logits, images, 5)
    torch.testing.assert_close(out["loss_sub"], reference_loss(out["logits"], sub, target)[2].float())
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    assert ms.train_step(images, target, optimizer, seed=5)["stepped"]


def test_check_input_size_refuses_what_a_strict_model_refuses():
    # helper-101: check_input_size passed sizes that the model's patch embedding then refused at the forward
    with pytest.raises(ValueError, match=r"built for \(32, 32\) images and refuses \(64, 64\).*img_size=64"):
        MaskSub(tiny_vit()).check_input_size(64)
    MaskSub(tiny_vit(dynamic_img_size=True)).check_input_size(64)  # dynamic: any multiple of the patch
    with pytest.raises(ValueError, match=r"refuses \(128, 128\)"):
        MaskSub(BUILDERS["swinv2"]()).check_input_size(128)
    MaskSub(BUILDERS["swinv2"](strict_img_size=False)).check_input_size(128)
    with pytest.raises(ValueError, match=r"refuses \(66, 66\)"):  # helper-104: a Swin has no patch-size error
        MaskSub(BUILDERS["swin"]()).check_input_size(66)


def test_an_indivisible_image_size_gets_a_cell_size_that_works():
    from masksub_kernels.training.families import check_input_size

    cnn = torch.nn.Conv2d(3, 3, 3)
    for size, hint in ((299, "or cell_size=23"), (240, "or cell_size=30"), (202, "or cell_size=101"),
                       ((224, 299), "no cell size divides 224 x 299 into 2 to 8192 cells")):  # fmt: skip
        with pytest.raises(ValueError, match=hint):
            check_input_size("pixel", cnn, size, 32, 0.5)
    mk.mask_image_grid(torch.zeros(1, 3, 202, 202), 0.5, cell_size=101)  # the suggestion is one the op takes


def test_only_cnns_count_as_convolutional():
    # the pixel-grid sub-branch is a CNN's recipe; other models get it with the warning (helper-94's probe: a
    # patchifying conv, an attention block named *Attn, an LSTM made MLP-Mixer, CaiT, HaloNet, Sequencer "CNNs")
    import timm

    from masksub_kernels.training.pixel import is_convolutional

    class HaloAttn(torch.nn.Identity):
        pass

    class SplitAttn(torch.nn.Identity):  # ResNeSt's channel gate: a CNN still
        pass

    conv3 = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert is_convolutional(torch.nn.Sequential(conv3, torch.nn.ReLU()))
    assert not is_convolutional(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Flatten()))
    assert not is_convolutional(torch.nn.Sequential(conv3, HaloAttn()))
    assert is_convolutional(torch.nn.Sequential(conv3, SplitAttn()))
    assert not is_convolutional(torch.nn.Sequential(conv3, torch.nn.LSTM(8, 8)))
    # real timm models, built on the meta device (no memory): CNNs with channel gates stay CNNs; transformers whose
    # attention is named otherwise (CoaT's FactorAttn..., EfficientViT's LiteMLA, SHViT's SHSA) are not
    # MambaOut's gated convolutions are no Mamba (helper-103's sweep: it was warned)
    for name, cnn in (("resnest14d", True), ("skresnet18", True), ("convnext_atto", True), ("coat_lite_tiny", False),
                      ("efficientvit_b0", False), ("shvit_s1", False), ("botnet26t_256", False),
                      ("mambaout_femto", True)):  # fmt: skip
        with torch.device("meta"):
            assert is_convolutional(timm.create_model(name)) == cnn, name
    mixer = timm.create_model("mixer_s16_224", img_size=32, num_classes=10)  # 8 blocks of width 512: ~1 s
    with pytest.warns(UserWarning, match="pixel-grid fallback"):
        MaskSub(mixer)


def test_models_with_an_int_patch_size_and_the_warning_per_architecture():
    # helper-103's sweep: XCiT and EfficientViT-MSRA (patch_size an int) crashed MaskSub(model) in check_input_size;
    # MobileViT after HaloNet (both timm ByobNet) got the fallback without its warning
    import timm

    for name in ("xcit_nano_12_p16_224", "efficientvit_m0", "halonet26t", "mobilevit_xxs"):
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=10)
        with pytest.warns(UserWarning, match="pixel-grid fallback") as caught:
            assert MaskSub(model).family == "pixel"
        assert model.pretrained_cfg["architecture"] in str(caught[0].message)
        MaskSub(model, family="pixel").check_input_size(224)


def test_a_model_without_classifier_is_refused():
    import timm

    with pytest.raises(ValueError, match=r"has no classifier \(timm num_classes=0\)"):
        MaskSub(timm.create_model("resnet10t", num_classes=0))


def test_train_step_refuses_a_process_group_without_wrap_ddp(monkeypatch):
    # DistributedDataParallel(ms) built by hand is not what train_step runs: each rank would step alone
    import torch.distributed as dist

    ms = MaskSub(tiny_vit()).train()
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    images, target = batch("vit")
    with pytest.raises(RuntimeError, match=r"needs ms.wrap_ddp\(...\)"):
        ms.train_step(images, target, optimizer)


def test_input_errors_are_clear():
    # a CNN's images too small for its cells: the size advice (was num_kept_tokens' talk of tokens, at the forward)
    ms = _wrapped("resnet")
    images, target = batch("resnet")
    small = images[..., :32, :32]
    with pytest.raises(ValueError, match=r"keeps none of the 1 mask cell\(s\) of 32 pixels that fit 32 x 32 images"):
        ms(small, target)
    with pytest.raises(ValueError, match="not divisible by the mask cell of 32 pixels"):
        ms(images[..., :48, :48], target)
    # a Hugging Face batch mapping to an image family (was "needs a target" / AttributeError)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)
    hf_batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "labels": torch.zeros(2, 8, dtype=torch.long)}
    for call in (
        lambda: ms(hf_batch),
        lambda: ms(hf_batch, branch="sub"),
        lambda: ms.train_step(hf_batch, None, optimizer),
    ):
        with pytest.raises(TypeError, match=r"takes images as a tensor \[B, C, H, W\]; got dict \(a batch mapping"):
            call()
    # a frozen model (was autograd's "element 0 of tensors does not require grad"), checked on every call
    for p in ms.parameters():
        p.requires_grad_(False)
    for schedule in ("sequential", "joint"):
        with pytest.raises(ValueError, match="no parameter of the optimizer requires grad"):
            ms.train_step(images, target, optimizer, schedule=schedule)
    ms.model.fc.weight.requires_grad_(True)  # the head unfrozen: trains
    assert ms.train_step(images, target, optimizer)["stepped"]


@pytest.mark.parametrize("schedule", ["sequential", "joint"])
def test_swin_with_only_its_mask_token_trainable_steps(schedule):
    # the main branch never uses the mask token: its loss has no graph, and the sequential step skips its backward
    ms = _wrapped("swin")
    for p in ms.model.parameters():
        p.requires_grad_(False)
    images, target = batch("swin")
    before = ms.mask_token.detach().clone()
    ms.train_step(images, target, torch.optim.SGD(ms.parameters(), lr=1.0), schedule=schedule)
    assert not torch.equal(ms.mask_token.detach(), before)


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="loss must be one of"):
        MaskSub(tiny_vit(), loss="mse")
    with pytest.raises(ValueError, match="variant must be one of"):
        MaskSub(tiny_vit(), variant="cut")
    with pytest.raises(ValueError, match=r"mask_ratio must be a finite number in \[0, 1\), got 1.0"):
        MaskSub(tiny_vit(), mask_ratio=1.0)
    with pytest.raises(ValueError, match="needs loss='bce'"):
        MaskSub(tiny_vit(), target_threshold=0.0)
    # the criterion alone refuses as MaskSub does (helper-281: any mode but 'bce' ran CE, a threshold was dropped)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"mode must be one of \('ce', 'bce'\), got 'BCE'"):
        supervised_loss(logits, labels, mode="BCE")
    with pytest.raises(ValueError, match="needs mode='bce', got mode='ce'"):
        supervised_loss(logits, labels, target_threshold=0.0)
    with pytest.raises(ValueError, match="defined for ViTs"):
        MaskSub(BUILDERS["resnet"](), variant="path")
    with pytest.raises(ValueError, match="lacks"):
        MaskSub(BUILDERS["resnet"](), family="vit")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        MaskSub(lambda x: x)
    # Swin at 56 px / patch 4: a 14 x 14 token grid that cells of 8 tokens do not divide.
    with pytest.raises(ValueError, match="not divisible by the mask cell of 8 tokens"):
        MaskSub(BUILDERS["swin"](img_size=56, window_size=7))
    ms = MaskSub(BUILDERS["resnet"]())
    with pytest.raises(ValueError, match="image size 48 x 48 is not divisible by the mask cell of 32 pixels"):
        ms.check_input_size(48)
    with pytest.raises(ValueError, match="keeps"):
        ms.check_input_size(32)  # one cell: r = 0.5 keeps none
    with pytest.raises(ValueError, match="patch size"):
        MaskSub(tiny_vit()).check_input_size(36)
    for cell_size in (0, -8, 2.0, True):
        with pytest.raises(ValueError, match="cell_size must be an int >= 1"):
            MaskSub(BUILDERS["resnet"](), cell_size=cell_size)
    for variant in ("mask", "drop", "path"):  # a ViT drops tokens: a cell size would be silently unused
        with pytest.raises(ValueError, match="cell_size is an option of the grid masks"):
            MaskSub(tiny_vit(), variant=variant, cell_size=4)
    for weight in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sub_weight must be a finite number >= 0"):
            MaskSub(tiny_vit(), sub_weight=weight)
    for eps in (-0.1, 1.5, float("nan")):  # helper-115: refused at construction, not at the first step
        with pytest.raises(ValueError, match=r"label_smoothing must be a finite number in \[0, 1\]"):
            MaskSub(tiny_vit(), label_smoothing=eps)
    for threshold in (float("nan"), float("-inf"), -0.5, 1.0):
        with pytest.raises(ValueError, match="target_threshold must be"):
            MaskSub(tiny_vit(), loss="bce", target_threshold=threshold)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"main_weight": 1e39}, ValueError),  # finite, beyond fp32: masksub_loss refused it at the first step
        ({"main_weight": 10**400}, ValueError),  # beyond float: an OverflowError
        ({"sub_weight": "0.5"}, TypeError),
        ({"label_smoothing": torch.tensor(0.1)}, TypeError),
        ({"loss": "bce", "target_threshold": 1}, ValueError),
    ],
)
def test_masksub_checks_its_loss_options_as_masksub_loss_does(options, error):
    # helper-294: one checker (ops/_common.check_real) for both: what MaskSub takes at construction, masksub_loss
    # takes at every step, with the same message
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(error) as by_masksub:
        MaskSub(tiny_vit(), **options)
    loss_options = {("mode" if k == "loss" else k): v for k, v in options.items()}
    with pytest.raises(error) as by_loss:
        mk.masksub_loss(logits, logits.clone(), labels, **loss_options)
    assert str(by_masksub.value) == str(by_loss.value)


def test_model_kwargs_need_a_forward_that_both_branches_run_and_that_takes_them():
    class ScaledCNN(torch.nn.Module):  # the pixel family runs the forward: its keyword arguments reach both branches
        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 10)

        def forward(self, images, *, scale=1.0):
            return self.head(self.conv(images).mean((2, 3))) * scale

    torch.manual_seed(0)
    model = ScaledCNN().double()
    ms = MaskSub(model, model_kwargs={"scale": 3.0})
    images, target = batch("resnet")
    out = ms(images, target, seed=5)
    torch.testing.assert_close(out["logits"], model(images, scale=3.0), rtol=0, atol=0)
    sub = sub_logits_for_seed("resnet", lambda x: model(x, scale=3.0), images, 5)
    torch.testing.assert_close(ms.sub_logits(images, seed=5), sub, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\['shift'\] are not keyword arguments of ScaledCNN.forward, which takes "
                       r"\['scale'\]"):  # fmt: skip
        MaskSub(model, model_kwargs={"shift": 1.0})
    for name in ("vit", "swin"):  # timm's ViT / Swin sub-branches run the model's parts, not its forward
        with pytest.raises(ValueError, match=f"the {name} sub-branch of .* does not run"):
            MaskSub(BUILDERS[name](), model_kwargs={"scale": 2.0})
    with pytest.raises(ValueError, match=r"not keyword arguments of VisionTransformer.forward"):
        MaskSub(tiny_vit(), variant="drop", model_kwargs={"scale": 2.0})  # DropSub runs it: timm's takes no keyword
    assert MaskSub(tiny_vit(), model_kwargs={}).model_kwargs == {}


def test_a_vit_image_width_off_the_patch_is_refused():  # helper-164: F3
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5, dynamic_img_size=True
    )  # not strict: the ViT branch's own check decides
    MaskSub(model).check_input_size((32, 40))
    for size in ((32, 36), (36, 32)):
        with pytest.raises(ValueError, match="not divisible by the ViT patch size"):
            MaskSub(model).check_input_size(size)


def test_the_suggested_cell_size_takes_the_larger_on_a_tie():  # helper-164: F7
    from masksub_kernels.training import families

    # 1020 = 30 x 34: cells of 30 and of 34 both divide it, each 2 from cell_size=32: the larger is named
    with pytest.raises(ValueError, match=r"or cell_size=34$"):
        families.check_input_size("pixel", torch.nn.Conv2d(3, 3, 1), 1020, 32, 0.5)


# helper-172's mutation audit
def test_a_timm_vit_whose_configured_grid_keeps_no_token_is_refused_at_construction():
    # 16 px, patch 8: 4 patch tokens; r = 0.8 keeps floor(4 * 0.2) = 0 of them
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=1, num_classes=3)
    with pytest.raises(ValueError, match="at least one must be kept"):
        MaskSub(vit, mask_ratio=0.8)


def test_swin_grid_error_names_height_then_width():  # helper-172: S3, a non-square grid
    from timm.models.swin_transformer import SwinTransformer

    swin = SwinTransformer(
        img_size=(64, 48),
        patch_size=4,
        window_size=4,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=3,
        drop_path_rate=0.0,
    )
    with pytest.raises(ValueError, match="token grid 16 x 12 is not divisible"):
        MaskSub(swin)


def _warn_here() -> None:
    warnings.warn("a warning shown once (the 'default' action)", UserWarning, stacklevel=1)


def test_a_baseline_check_neither_warns_nor_resets_the_warnings_registry(monkeypatch):
    # check_like_masksub's catch_warnings + simplefilter reset the registry: a "default" / "once" warning showed again
    monkeypatch.setattr(families, "_WARNED", set())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))  # no CNN, no ViT: the pixel fallback
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        _warn_here()
        families.check_like_masksub(model, 64, "mask", None, 0.5)
        _warn_here()
    assert [str(w.message) for w in shown] == ["a warning shown once (the 'default' action)"]
    with pytest.warns(UserWarning, match="pixel-grid fallback"):  # a MaskSub of that model still warns
        families.resolve_family(model)
    with pytest.raises(ValueError, match="it takes input_ids"):  # the text models' refusal is kept
        families.check_like_masksub(types.SimpleNamespace(main_input_name="input_ids"), 64, "mask", None, 0.5)
