"""The masked-LM wrapper's branches (masksub_kernels/training/mlm.py): what each branch embeds and shows the
encoder (segments, a padded row's share of real tokens under sub_fill='mask') and the corruption's dtypes; from
helper-213's third mutation audit of the masked-LM path (each test names the mutant it kills)."""

from __future__ import annotations

import pytest
import torch
from test_mlm import MASK_ID, make_batch, tiny_bert

from masksub_kernels.training import MaskSub
from masksub_kernels.training.mlm import IGNORE_INDEX, mlm_corrupt

pytest.importorskip("transformers")


# kills mlm.py:157 `input_ids = input_ids.long()` left out: int32 blocks gave int32 labels (the docstring promises
# int64 for both; only the random-token draw made the corrupted ids int64), so a caller's labels changed dtype with
# its input's
def test_corruption_of_int32_ids_gives_int64_ids_and_labels():
    ids = torch.randint(5, 1000, (4, 64), generator=torch.Generator().manual_seed(0))
    want = mlm_corrupt(ids, None, vocab_size=1000, mask_token_id=MASK_ID, seed=3)
    got = mlm_corrupt(ids.int(), None, vocab_size=1000, mask_token_id=MASK_ID, seed=3)
    for a, b in zip(got, want):
        assert a.dtype == torch.int64 and torch.equal(a, b)


# kills mlm.py:319 `kept.scatter_(1, ids, slot_valid)` -> `kept.scatter_(1, ids, True)`: with sub_fill='mask' a
# padded row of L_b real tokens showed the sub-branch the real tokens in its slots past K_b = floor(L_b (1 - r)) too
# (a 14-token row at r = 0.5 saw 8 of them, not 7); the drop path's share was tested, the mask path's not
def test_mask_fill_shows_a_padded_row_only_its_share_of_real_tokens():
    ms = MaskSub(tiny_bert(), mask_ratio=0.5, sub_fill="mask", mask_token_id=MASK_ID)
    batch = make_batch(batch=4, seed=3, padded=True)
    seen = {}
    ms._mlm.encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    sub = ms(batch, branch="sub", seed=11)
    shown = seen["input_ids"]
    for b in range(4):
        real = int(batch["attention_mask"][b].sum())
        always = int(((batch["labels"][b] != IGNORE_INDEX) | batch["special_tokens_mask"][b].bool())[:real].sum())
        kept = set(sub.ids[b, : max(real // 2, always)].tolist())
        for p in range(real):  # a real token the row does not keep is [MASK]; a kept one is the batch's own
            want = batch["input_ids"][b, p] if p in kept else MASK_ID
            assert shown[b, p] == want, (b, p)


# kills mlm.py:312 the drop path's `token_type_ids=take(token_types)` -> None, mlm.py:325 the mask path's
# `token_type_ids=token_types` -> None and mlm.py:261 main_hidden's `token_type_ids=batch.get(...)` left out: every
# branch embedded segment B as segment A (sentence-pair batches; the command's own blocks have one segment, and the
# tests' BERTs had type_vocab_size 2 but all-zero types, so no test told the two apart)
@pytest.mark.parametrize("fill", ["drop", "mask"])
def test_every_branch_embeds_each_tokens_own_segment(fill):
    model = tiny_bert()
    with torch.no_grad():  # BERT initialises the type embeddings near 0: make segment B clearly another
        model.bert.embeddings.token_type_embeddings.weight[1] += 1.0
    ms = MaskSub(model, mask_ratio=0.0, sub_fill=fill, mask_token_id=MASK_ID if fill == "mask" else None).eval()
    batch = make_batch(batch=3, seed=4)
    batch["token_type_ids"] = (torch.arange(batch["input_ids"].shape[1]) >= 7).long().expand_as(batch["input_ids"])
    main = ms(batch, branch="main")
    own = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    torch.testing.assert_close(model.cls.predictions.decoder(main), own.logits, atol=1e-5, rtol=1e-5)
    sub = ms.sub_logits(batch, seed=5)  # r = 0 keeps every token: the sub-branch's head inputs are the main's
    expected = main.gather(1, sub.ids[:, :, None].expand(-1, -1, main.shape[2]))
    torch.testing.assert_close(sub.hidden, expected, atol=1e-5, rtol=1e-5)


# helper-222: sub_criterion's masked-LM line had no direct test: the sub term alone (main_weight 0) over the kept
# predicted rows, against the main branch's detached head at the same positions; no gradient reaches the main hidden
def test_the_mlm_sub_criterion_trains_the_sub_branch_alone_against_the_detached_main():
    model = tiny_bert().double()
    ms = MaskSub(model, mask_ratio=0.5).eval()
    batch = make_batch(batch=3, seed=2)
    main = ms(batch, branch="main")
    sub = ms(batch, branch="sub", seed=7)
    loss = ms.sub_criterion(sub, main)
    decoder = model.cls.predictions.decoder
    teacher = decoder(main.gather(1, sub.ids[:, :, None].expand(-1, -1, main.shape[2]))).detach()
    rows = sub.target != IGNORE_INDEX
    want = -(torch.softmax(teacher[rows], 1) * torch.log_softmax(decoder(sub.hidden)[rows], 1)).sum(1).mean()
    torch.testing.assert_close(loss, want.float(), rtol=1e-6, atol=1e-6)
    grad_main, grad_sub = torch.autograd.grad(loss, [main, sub.hidden], allow_unused=True)
    assert grad_main is None  # the teacher is detached
    torch.testing.assert_close(grad_sub, torch.autograd.grad(want, sub.hidden)[0], rtol=1e-5, atol=1e-8)


# helper-317: BigBird's block-sparse attention was switched to full for good by the sub-branch's shorter sequences
# (its config still saying block sparse); a batch's position_ids were ignored by both branches, silently
def test_block_sparse_bigbird_and_a_batchs_position_ids_are_refused():
    import transformers

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    sparse = transformers.BigBirdForMaskedLM(transformers.BigBirdConfig(**small))
    with pytest.raises(ValueError, match=r"attention_type='block_sparse'.*set_attention_type\('original_full'\)"):
        MaskSub(sparse)
    sparse.config.attention_type = "original_full"  # the config alone: its layers are still block sparse (helper-319)
    with pytest.raises(ValueError, match="attention_type='block_sparse'"):
        MaskSub(sparse)
    sparse.config.attention_type = "block_sparse"
    sparse.bert.set_attention_type("original_full")  # transformers' own switch: the config still says block sparse
    assert MaskSub(sparse).family == "mlm"
    full = transformers.BigBirdConfig(**small, attention_type="original_full")
    assert MaskSub(transformers.BigBirdForMaskedLM(full)).family == "mlm"
    batch = make_batch(batch=2, seed=4)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).flip(0).expand_as(batch["input_ids"])
    with pytest.raises(ValueError, match=r"batch\['position_ids'\] is not read by the mlm family"):
        MaskSub(tiny_bert())(batch, seed=1)


# helper-318's mutation audit
# kills M34  training/mlm.py:265  `batch.get("position_ids") is not None` -> `"position_ids" in batch`
#   (a collator's position_ids=None, which neither branch would read, was refused)
def test_a_batchs_position_ids_of_none_is_accepted():
    batch = make_batch(batch=2, seed=4)
    batch["position_ids"] = None
    out = MaskSub(tiny_bert())(batch, seed=1)
    assert torch.isfinite(out["loss"])


def test_return_dict_false_is_refused_when_built_and_when_set_afterwards():
    # a masked LM's forward returning tuples failed inside transformers (AttributeError on a tuple)
    model = tiny_bert()
    model.config.return_dict = False
    refused = r"BertForMaskedLM's config has return_dict=False: .* set model.config.return_dict = True"
    with pytest.raises(ValueError, match=refused):
        MaskSub(model)
    model.config.return_dict = True
    ms = MaskSub(model)
    model.config.return_dict = False
    with pytest.raises(ValueError, match=r"BertForMaskedLM's config has return_dict=False"):
        ms(make_batch())
    model.config.return_dict = True
    assert ms(make_batch())["loss"] > 0
