"""The mlm family (training/mlm.py, docs/semantics.md §10): detection, BERT's corruption, the sub-branch's kept
tokens, and the gradients of a hand-written MaskSub step on a tiny BERT / RoBERTa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import masksub_kernels as mk
from masksub_kernels.training import MaskSub
from masksub_kernels.training import mlm as mk_mlm
from masksub_kernels.training.mlm import IGNORE_INDEX, mlm_corrupt

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, MASK_ID, CLS_ID, SEP_ID, PAD_ID = 50, 16, 4, 2, 3, 0


def tiny_bert(**kwargs):
    cfg = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
               pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(transformers.BertConfig(**{**cfg, **kwargs}))


def tiny_roberta():
    cfg = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, pad_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    return transformers.RobertaForMaskedLM(cfg)


def make_batch(batch=3, length=LENGTH, seed=0, padded=False):
    """Blocks [CLS] tokens [SEP] (row b of a padded batch has length - 2 b real tokens, then [PAD]s), corrupted."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    attention = torch.ones_like(ids)
    if padded:
        for b in range(batch):
            real = length - 2 * b
            ids[b, real - 1], ids[b, real:], attention[b, real:] = SEP_ID, PAD_ID, 0
    special = torch.isin(ids, torch.tensor([CLS_ID, SEP_ID, PAD_ID]))
    corrupted, labels = mlm_corrupt(ids, special, vocab_size=VOCAB, mask_token_id=MASK_ID, seed=seed, probability=0.15)
    out = {"input_ids": corrupted, "labels": labels, "special_tokens_mask": special}
    if padded:
        out["attention_mask"] = attention
    return out


# ----------------------------------------------------------------------------------------------------------------
# Detection and options
# ----------------------------------------------------------------------------------------------------------------


def test_detects_bert_and_roberta():
    assert MaskSub(tiny_bert()).family == "mlm"
    assert MaskSub(tiny_roberta()).family == "mlm"
    assert MaskSub(tiny_bert(), family="mlm").family == "mlm"


def test_refuses_bad_options():
    from tests.training._models import tiny_vit

    with pytest.raises(ValueError, match="family='mlm' needs"):
        MaskSub(tiny_vit(), family="mlm")
    with pytest.raises(ValueError, match="loss='ce'"):
        MaskSub(tiny_bert(), loss="bce")
    with pytest.raises(ValueError, match="cell_size"):
        MaskSub(tiny_bert(), cell_size=4)
    with pytest.raises(ValueError, match="sub_fill must be one of"):
        MaskSub(tiny_bert(), sub_fill="zero")
    with pytest.raises(ValueError, match="needs mask_token_id"):
        MaskSub(tiny_bert(), sub_fill="mask")
    with pytest.raises(ValueError, match="mask_token_id must be"):
        MaskSub(tiny_bert(), sub_fill="mask", mask_token_id=VOCAB)
    with pytest.raises(ValueError, match="mask_token_id=4 goes with sub_fill='mask'"):  # stored, never used
        MaskSub(tiny_bert(), mask_token_id=4)
    with pytest.raises(ValueError, match="DropSub"):
        MaskSub(tiny_bert(), variant="drop")
    with pytest.raises(ValueError, match="options of the mlm family"):
        MaskSub(tiny_vit(), sub_fill="mask")
    with pytest.raises(ValueError, match="options of the mlm family"):
        MaskSub(tiny_vit(), chunk_rows=8)
    with pytest.raises(ValueError, match="chunk_rows must be an int >= 1"):
        MaskSub(tiny_bert(), chunk_rows=0)
    with pytest.raises(TypeError, match="chunk_rows must be an int >= 1 or None, got float"):
        MaskSub(tiny_bert(), chunk_rows=2.0)
    with pytest.raises(ValueError, match="the mlm sub-branch of BertForMaskedLM does not run"):
        MaskSub(tiny_bert(), model_kwargs={"output_attentions": True})  # its branches run the model's parts


def test_refuses_models_it_would_train_wrongly():
    pretraining = transformers.BertForPreTraining(tiny_bert().config)
    with pytest.raises(ValueError, match="next-sentence head"):
        MaskSub(pretraining)
    with pytest.raises(ValueError, match="decoder"):
        MaskSub(tiny_bert(is_decoder=True))
    with pytest.raises(ValueError, match="relative_key"):
        MaskSub(tiny_bert(position_embedding_type="relative_key"))
    MaskSub(tiny_bert(position_embedding_type="relative_key"), sub_fill="mask", mask_token_id=MASK_ID)


def test_the_mode_is_the_masked_lms():
    # the mode is the wrapped model's (a Trainer switches the model): its evaluation runs the model only
    ms = MaskSub(tiny_bert(), mask_ratio=0.25)
    batch = make_batch()
    ms.model.eval()
    assert set(ms(batch)) == {"loss", "loss_main", "correct", "count"}
    ms.model.train()
    assert "loss_sub" in ms(batch)
    ms.model.eval()
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    assert set(ms(unlabelled)) == {"logits"}  # eval needs no labels (the training sub-branch does)


def test_a_masked_lm_of_another_structure_or_a_text_classifier_is_refused_at_construction():
    # helper-107: DistilBERT got the image fallback, then "a batch mapping is for a Hugging Face masked-LM model";
    # helper-131: through MaskSubTrainer, "needs batches with 'pixel_values'" at the first step: refused when built
    config = transformers.DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    with pytest.raises(ValueError, match=r"DistilBertForMaskedLM is a masked LM of another structure \(it takes "
                                         r"input_ids\); the text family 'mlm' takes masked LMs of BERT"):  # fmt: skip
        MaskSub(transformers.DistilBertForMaskedLM(config))
    bert = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, num_labels=3)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"BertForSequenceClassification is a model of token ids \(it takes input_ids\)"
    ):
        MaskSub(transformers.BertForSequenceClassification(bert))
    # family='pixel' asked for by name: built (the caller's choice), and a batch mapping gets the call's hint
    ms = MaskSub(transformers.DistilBertForMaskedLM(config), family="pixel")
    batch = {"input_ids": torch.randint(5, 64, (2, 8))}
    with pytest.raises(TypeError, match=r"DistilBertForMaskedLM is a masked LM, but family 'mlm' takes BERT"):
        ms(batch, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("label", [VOCAB, -1])
def test_an_out_of_range_label_is_the_same_clear_error_in_training_and_in_evaluation(label):
    # helper-131: evaluation gave cross_entropy's IndexError (a device assert on a GPU)
    ms = MaskSub(tiny_bert(), mask_ratio=0.25)
    batch = make_batch()
    predicted = (batch["labels"] != -100).nonzero()[0]
    batch["labels"][tuple(predicted)] = label
    message = rf"class ids must be in \[0, {VOCAB}\) or ignore_index=-100, got {label}"
    for mode in ("train", "eval"):
        getattr(ms.model, mode)()
        with pytest.raises(ValueError, match=message):
            ms(batch)


def test_mlm_corrupt_caps_the_kept_tokens_of_a_row():
    ids = torch.arange(5, 45).view(2, 20)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    special[1, 5] = True  # row 1: three special tokens
    full, full_labels = mlm_corrupt(ids, special, vocab_size=100, mask_token_id=4, seed=3, probability=0.9)
    ids_c, labels = mlm_corrupt(ids, special, vocab_size=100, mask_token_id=4, seed=3, probability=0.9, max_kept=8)
    chosen, full_chosen = labels != -100, full_labels != -100
    assert chosen.sum(1).tolist() == [6, 5]  # 8 - 2 and 8 - 3 special tokens
    for row in range(2):  # the first ones in position order, as drawn; the others untouched
        first = full_chosen[row].nonzero().flatten()[: 8 - int(special[row].sum())]
        assert chosen[row].nonzero().flatten().tolist() == first.tolist()
    assert torch.equal(ids_c[chosen], full[chosen]) and torch.equal(ids_c[~chosen], ids[~chosen])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_kept must be an int >= 0"):
            mlm_corrupt(ids, special, vocab_size=100, mask_token_id=4, seed=3, max_kept=bad)


def test_mlm_corrupt_caps_padded_rows_without_counting_their_padding():
    # the sub-branch drops padding (it is not kept): a row of 12 real tokens and 52 [PAD] keeps all its predictions
    # under K = 32 when the attention mask says which tokens are padding
    ids = torch.arange(5, 5 + 2 * 64).view(2, 64) % 90 + 5
    attention = torch.ones_like(ids)
    attention[1, 12:] = 0
    special = attention == 0
    special[:, 0] = True
    kwargs = {"vocab_size": 100, "mask_token_id": 4, "seed": 3, "probability": 0.9}
    _, free = mlm_corrupt(ids, special, **kwargs)
    _, capped = mlm_corrupt(ids, special, **kwargs, max_kept=32, attention_mask=attention)
    assert torch.equal(capped[1], free[1]) and (free[1] != -100).any()
    assert (capped[0] != -100).sum() == 31 < (free[0] != -100).sum()  # 32 - [CLS]
    _, without = mlm_corrupt(ids, special, **kwargs, max_kept=32)  # padding counted as kept: nothing predicted
    assert (without[1] != -100).sum() == 0
    with pytest.raises(ValueError, match="attention_mask must be shaped like input_ids"):
        mlm_corrupt(ids, special, **kwargs, max_kept=32, attention_mask=attention[:, :-1])


def test_refuses_bad_batches():
    ms = MaskSub(tiny_bert())
    batch = make_batch()
    with pytest.raises(TypeError, match="batch mapping"):
        ms(batch["input_ids"], batch["labels"])
    with pytest.raises(ValueError, match="needs batch\\['labels'\\]"):
        ms({"input_ids": batch["input_ids"]}, branch="sub")
    with pytest.raises(ValueError, match="labels"):
        ms({**batch, "labels": batch["labels"][:, :-1]})
    with pytest.raises(ValueError, match="integer"):
        ms({**batch, "input_ids": batch["input_ids"].float()})
    for labels in (batch["labels"].float(), batch["labels"] >= 0):  # not a probability target: token ids
        with pytest.raises(ValueError, match=r"batch\['labels'\] must be integer token ids"):
            ms({**batch, "labels": labels})
    with pytest.raises(TypeError, match="attention_mask"):
        ms({**batch, "attention_mask": [[1] * LENGTH] * 3})
    with pytest.raises(ValueError, match="target=batch\\['labels'\\]"):
        ms(batch, batch["labels"].clone())
    # train_step too, in both schedules (the sequential one's main loss read the target, its sub-branch the batch's
    # labels: another target trained the two terms on different labels); None means the batch's labels
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)
    for schedule in ("sequential", "joint"):
        with pytest.raises(ValueError, match="target=batch\\['labels'\\]"):
            ms.train_step(batch, batch["labels"].clone(), optimizer, schedule=schedule)
        with pytest.raises(TypeError, match="batch mapping"):
            ms.train_step(batch["input_ids"], batch["labels"], optimizer, schedule=schedule)
    by_none = ms.train_step(batch, None, optimizer, seed=1)
    by_labels = ms.train_step(batch, batch["labels"], optimizer, seed=1)
    torch.testing.assert_close(by_none["loss"], by_labels["loss"])


@pytest.mark.parametrize("build, longest", [(tiny_bert, 32), (tiny_roberta, 40 - 2)])
def test_sequences_longer_than_the_position_embeddings_are_refused(build, longest):
    # was a raw "expanded size" error from inside the embeddings; RoBERTa's positions start at padding_idx + 1 (1)
    ms = MaskSub(build()).train()
    assert mk_mlm.max_length(ms._mlm) == longest
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)
    ms.train_step(make_batch(length=longest), None, optimizer, seed=1)  # the longest fits
    too_long = make_batch(length=longest + 1)
    with pytest.raises(ValueError, match=f"sequences of {longest + 1} tokens are longer than the model's {longest}"):
        ms(too_long)
    with pytest.raises(
        ValueError, match=rf"truncate the sequences to {longest} tokens \(masksub-train-mlm: --seq-len\)"
    ):
        ms(too_long)  # helper-270: a library error, not only the command's option
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ms.train_step(too_long, None, optimizer)
    if build is tiny_roberta:  # its positions count the tokens that are not padding: padded past the limit, fits
        padded = make_batch(length=longest + 2, padded=True)  # rows 1, 2: 2 and 4 padding tokens
        ids = padded["input_ids"].masked_fill(padded["input_ids"] == PAD_ID, 1)  # RoBERTa's padding id
        ids[0, -2:], padded["attention_mask"][0, -2:], padded["labels"][0, -2:] = 1, 0, IGNORE_INDEX  # row 0 too
        assert ms.eval()({**padded, "input_ids": ids})["count"] > 0


# ----------------------------------------------------------------------------------------------------------------
# The main branch's corruption
# ----------------------------------------------------------------------------------------------------------------


def test_corruption_reproducible_and_in_proportion():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (64, 256), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    before = ids.clone()
    a = mlm_corrupt(ids, special, vocab_size=1000, mask_token_id=MASK_ID, seed=7)
    b = mlm_corrupt(ids, special, vocab_size=1000, mask_token_id=MASK_ID, seed=7)
    c = mlm_corrupt(ids, special, vocab_size=1000, mask_token_id=MASK_ID, seed=8)
    assert torch.equal(ids, before)  # the caller's tensor is not written
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    corrupted, labels = a
    chosen = labels != IGNORE_INDEX
    assert not chosen[special].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(corrupted[~chosen], ids[~chosen])
    n = chosen.sum().item()
    assert abs(n / (~special).sum().item() - 0.15) < 0.01
    masked = (corrupted == MASK_ID) & chosen
    unchanged = (corrupted == ids) & chosen
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(unchanged.sum().item() / n - 0.1) < 0.02  # a random token equal to the original counts here (1e-3)
    drawn = []
    for manual_seed in (3, 3, None):  # seed left out: drawn from torch's generator, which torch.manual_seed repeats
        if manual_seed is not None:
            torch.manual_seed(manual_seed)
        drawn.append(mlm_corrupt(ids, special, vocab_size=1000, mask_token_id=MASK_ID)[1])
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2])


def test_corruption_bad_input():
    ids = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="input_ids"):
        mlm_corrupt(ids.float(), None, vocab_size=10, mask_token_id=4, seed=0)
    with pytest.raises(ValueError, match="special_tokens_mask"):
        mlm_corrupt(ids, ids[:, :2].bool(), vocab_size=10, mask_token_id=4, seed=0)
    with pytest.raises(ValueError, match="mask_token_id"):
        mlm_corrupt(ids, None, vocab_size=10, mask_token_id=10, seed=0)
    with pytest.raises(ValueError, match="probability"):
        mlm_corrupt(ids, None, vocab_size=10, mask_token_id=4, seed=0, probability=0.0)
    with pytest.raises(TypeError, match="seed"):
        mlm_corrupt(ids, None, vocab_size=10, mask_token_id=4, seed=1.5)


# ----------------------------------------------------------------------------------------------------------------
# The sub-branch's selection
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_sub_branch_keeps_every_predicted_and_special_token(padded, seed):
    ms = MaskSub(tiny_bert(), mask_ratio=0.5)
    batch = make_batch(batch=4, seed=seed, padded=padded)
    sub = ms(batch, branch="sub", seed=seed)
    keep = mk.num_kept_tokens(LENGTH, 0.5)
    assert sub.ids.shape == sub.target.shape == (4, keep) and sub.hidden.shape == (4, keep, 16)
    for b in range(4):
        kept = set(sub.ids[b].tolist())
        must = (batch["labels"][b] != IGNORE_INDEX) | batch["special_tokens_mask"][b].bool()
        if padded:
            must &= batch["attention_mask"][b].bool()
        assert set(must.nonzero().flatten().tolist()) <= kept
        # the targets are the kept positions' labels (-100 past the row's K_b under padding)
        predicted = sorted(p for p in kept if batch["labels"][b, p] != IGNORE_INDEX)
        assert sorted(sub.ids[b][sub.target[b] != IGNORE_INDEX].tolist()) == predicted
    again = ms(batch, branch="sub", seed=seed)
    assert torch.equal(again.ids, sub.ids)


def test_padded_rows_keep_their_share_of_real_tokens():
    """Row b with L_b real tokens keeps max(floor(L_b / 2), always-kept) real tokens in its first slots; padding
    is dropped first and the slots past K_b carry no target."""
    ms = MaskSub(tiny_bert(), mask_ratio=0.5)
    batch = make_batch(batch=4, seed=3, padded=True)
    sub = ms(batch, branch="sub", seed=11)
    for b in range(4):
        real = int(batch["attention_mask"][b].sum())
        always = int(((batch["labels"][b] != IGNORE_INDEX) | batch["special_tokens_mask"][b].bool())[:real].sum())
        row_keep = max(real // 2, always)
        assert (sub.ids[b, :row_keep] < real).all()  # real tokens first
        assert (sub.target[b, row_keep:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("padded", [False, True])
def test_sub_branch_without_dropping_equals_the_main_branch(padded):
    """r = 0 keeps every token, permuted: BERT is permutation-equivariant given the positions, so the sub-branch's
    head inputs are the main branch's at the kept real positions (checks the positions the sub-branch passes,
    RoBERTa's which skip padding included, and the attention mask of the kept slots)."""
    for model in (tiny_bert(), tiny_roberta()):
        ms = MaskSub(model, mask_ratio=0.0).eval()
        batch = make_batch(batch=3, seed=4, padded=padded)
        if model.config.model_type == "roberta":  # RoBERTa's padding id is 1
            batch["input_ids"] = batch["input_ids"].where(batch["input_ids"] != PAD_ID, model.config.pad_token_id)
        main = ms(batch, branch="main")
        sub = ms.sub_logits(batch, seed=5)
        expected = main.gather(1, sub.ids[:, :, None].expand(-1, -1, main.shape[2]))
        real = batch["attention_mask"].gather(1, sub.ids).bool() if padded else torch.ones_like(sub.ids, dtype=bool)
        torch.testing.assert_close(sub.hidden[real], expected[real], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Gradients of a hand-written step (the semantics written out, not the wrapper)
# ----------------------------------------------------------------------------------------------------------------


def hand_written_loss(model, batch, seed, mask_ratio, fill):
    """0.5 CE(z, y) over the predicted positions + 0.5 soft CE(s, stopgrad softmax(z)) over the same positions,
    with full [rows, V] logits and the kept positions drawn by the public op."""
    ids, labels, special = batch["input_ids"], batch["labels"], batch["special_tokens_mask"]
    B, L = ids.shape
    z = model(input_ids=ids).logits  # [B, L, V]
    keep = mk.num_kept_tokens(L, mask_ratio)
    kept = mk.random_keep_indices(B, L, keep, seed=seed, always_keep=(labels != IGNORE_INDEX) | special)
    if model.config.model_type == "roberta":  # no padding in these batches: positions pad + 1 .. pad + L
        positions = torch.arange(L).expand(B, L) + model.config.pad_token_id + 1
    else:
        positions = torch.arange(L).expand(B, L)
    if fill == "drop":
        s = model(input_ids=ids.gather(1, kept), position_ids=positions.gather(1, kept)).logits
    else:
        keep_mask = torch.zeros(B, L, dtype=torch.bool).scatter(1, kept, True)
        s = model(input_ids=torch.where(keep_mask, ids, MASK_ID)).logits.gather(
            1, kept[:, :, None].expand(-1, -1, VOCAB)
        )
    rows = labels != IGNORE_INDEX
    main = F.cross_entropy(z[rows], labels[rows])
    sub_rows = labels.gather(1, kept) != IGNORE_INDEX
    teacher = z.gather(1, kept[:, :, None].expand(-1, -1, VOCAB))[sub_rows].detach().softmax(-1)
    sub = -(teacher * s[sub_rows].log_softmax(-1)).sum(-1).mean()
    return 0.5 * main + 0.5 * sub


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("fill", ["drop", "mask"])
@pytest.mark.parametrize("schedule", ["joint", "sequential"])
def test_gradients_equal_a_hand_written_step(arch, fill, schedule):
    model = tiny_bert() if arch == "bert" else tiny_roberta()
    ms = MaskSub(model, mask_ratio=0.5, sub_fill=fill, mask_token_id=MASK_ID if fill == "mask" else None)
    batch = make_batch(batch=3, seed=2)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)
    out = ms.train_step(batch, batch["labels"], optimizer, seed=9, schedule=schedule)
    got = _grads(ms.model)
    model.zero_grad(set_to_none=True)
    expected_loss = hand_written_loss(model, batch, 9, 0.5, fill)
    expected_loss.backward()
    expected = _grads(model)
    torch.testing.assert_close(out["loss"], expected_loss.detach(), atol=1e-5, rtol=1e-5)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("schedule", ["joint", "sequential"])
def test_chunk_rows_reaches_the_fused_linear_loss(schedule, monkeypatch):
    # chunks of 2 rows (a few per step on this batch) give the hand-written step's gradients too
    chunks = []
    for name in ("linear_masksub_loss", "linear_soft_target_cross_entropy"):
        op = getattr(mk, name)
        monkeypatch.setattr(mk, name, lambda *a, _op=op, **k: chunks.append(k.get("chunk_rows")) or _op(*a, **k))
    model = tiny_bert()
    ms = MaskSub(model, mask_ratio=0.5, chunk_rows=np.int64(2))  # any integer, kept as an int
    assert type(ms.chunk_rows) is int and "chunk_rows=2" in repr(ms)
    batch = make_batch(batch=3, seed=2)
    out = ms.train_step(batch, batch["labels"], torch.optim.SGD(ms.parameters(), lr=0.0), seed=9, schedule=schedule)
    assert chunks and set(chunks) == {2}
    got = _grads(ms.model)
    model.zero_grad(set_to_none=True)
    expected_loss = hand_written_loss(model, batch, 9, 0.5, "drop")
    expected_loss.backward()
    torch.testing.assert_close(out["loss"], expected_loss.detach(), atol=1e-5, rtol=1e-5)
    for name, expected in _grads(model).items():
        torch.testing.assert_close(got[name], expected, atol=2e-5, rtol=1e-4, msg=name)


def test_eval_mode_matches_the_models_own_mlm_loss():
    model = tiny_bert()
    ms = MaskSub(model).eval()
    batch = make_batch(batch=3, seed=5)
    out = ms(batch)
    reference = model(input_ids=batch["input_ids"], labels=batch["labels"])
    torch.testing.assert_close(out["loss"], reference.loss, atol=1e-5, rtol=1e-5)
    rows = batch["labels"] != IGNORE_INDEX
    assert out["count"].item() == rows.sum().item()
    correct = (reference.logits[rows].argmax(-1) == batch["labels"][rows]).sum()
    assert out["correct"].item() == correct.item()


def test_more_predicted_tokens_than_the_sub_branch_keeps_is_refused():
    """A row whose predicted + special tokens outnumber K cannot keep them all: the selection op refuses it (on
    CPU tensors by default) rather than dropping predicted positions."""
    ms = MaskSub(tiny_bert(), mask_ratio=0.75)
    batch = make_batch(batch=2, seed=4)
    batch["labels"][0] = batch["input_ids"][0]  # every position predicted
    with pytest.raises(ValueError, match=r"mask_ratio=0.75 keeps K=\d+ of \d+ tokens per row.*lower mask_ratio") as e:
        ms(batch, branch="sub", seed=1)
    # helper-270: the documented fix named, not the op's own "(unvalidated, ...)" note
    keep = mk.num_kept_tokens(batch["input_ids"].shape[1], 0.75)
    assert f"row 0 has {batch['input_ids'].shape[1]} predicted + special tokens" in str(e.value)
    assert f"mlm_corrupt(..., max_kept={keep})" in str(e.value) and "unvalidated" not in str(e.value)


@pytest.mark.parametrize("fill", ["drop", "mask"])
def test_joint_and_sequential_agree_on_padded_batches_with_smoothing(fill):
    """Padded rows (per-row K_b, masked slots) and label smoothing: both schedules give the same gradients."""
    grads = []
    for schedule in ("joint", "sequential"):
        ms = MaskSub(tiny_bert(), label_smoothing=0.1, sub_fill=fill, mask_token_id=MASK_ID if fill == "mask" else None)
        batch = make_batch(batch=4, seed=6, padded=True)
        out = ms.train_step(batch, batch["labels"], torch.optim.SGD(ms.parameters(), lr=0.0), seed=3, schedule=schedule)
        assert torch.isfinite(out["loss"])
        grads.append(_grads(ms.model))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=2e-5, rtol=1e-4, msg=name)


def test_a_short_row_with_more_predicted_tokens_than_its_share_keeps_them_all():
    # helper-115: K_b = max(floor(L_b (1 - r)), the row's always-kept count): 8 real tokens keep 4 at r = 0.5, but
    # [CLS], [SEP] and 5 predicted ones must all stay, each with its label (the max was unchecked)
    ms = MaskSub(tiny_bert(), mask_ratio=0.5)
    ids = torch.randint(5, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(0))
    ids[0, 0], ids[0, 7], ids[0, 8:] = CLS_ID, SEP_ID, PAD_ID
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 1:6] = ids[0, 1:6]
    batch = {
        "input_ids": ids.masked_fill(labels != IGNORE_INDEX, MASK_ID), "labels": labels,
        "attention_mask": (ids != PAD_ID).long(), "special_tokens_mask": torch.isin(ids, torch.tensor([0, 2, 3])),
    }  # fmt: skip
    sub = ms(batch, branch="sub", seed=0)
    assert sorted(sub.ids[0][sub.target[0] != IGNORE_INDEX].tolist()) == [1, 2, 3, 4, 5]
    assert torch.equal(sub.target[0][sub.target[0] != IGNORE_INDEX].sort().values, labels[0, 1:6].sort().values)


# helper-169's mutation audit: the documented draws, floor of an odd row's share, the head's autocast dtype
def test_corruption_is_the_documented_philox_draws():
    """mlm_corrupt's docstring: uniforms of token (b, p) at Philox offsets 3 (b L + p) + k; k = 0 chooses, k = 1
    picks [MASK] (< 0.8) / random (< 0.9) / unchanged, k = 2 is the random token (draw % vocab_size)."""
    from masksub_kernels._philox import philox_uint32

    ids = torch.randint(5, 1000, (8, 64), generator=torch.Generator().manual_seed(0))
    corrupted, labels = mlm_corrupt(ids, None, vocab_size=1000, mask_token_id=MASK_ID, seed=7)
    draws = philox_uint32(7, torch.arange(8 * 64 * 3).view(8, 64, 3))
    u = draws[..., :2].double() / 2.0**32
    chosen = u[..., 0] < 0.15
    to_mask = chosen & (u[..., 1] < 0.8)
    to_random = chosen & (u[..., 1] >= 0.8) & (u[..., 1] < 0.9)
    assert to_random.any() and to_mask.any()
    assert torch.equal(labels != IGNORE_INDEX, chosen)
    assert (corrupted[to_mask] == MASK_ID).all()
    assert torch.equal(corrupted[to_random], draws[..., 2][to_random] % 1000)
    assert torch.equal(corrupted[~(to_mask | to_random)], ids[~(to_mask | to_random)])


def test_an_odd_padded_row_attends_floor_of_its_share():
    """K_b = floor(L_b (1 - r)): a row of 15 real tokens at r = 0.5 attends 7 kept slots, not 8 (the even rows of
    make_batch cannot tell floor from ceil)."""
    ms = MaskSub(tiny_bert(), mask_ratio=0.5)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, VOCAB, (2, LENGTH), generator=g)
    ids[:, 0], ids[0, -1] = CLS_ID, SEP_ID
    ids[1, 14], ids[1, 15] = SEP_ID, PAD_ID
    attention = (torch.arange(LENGTH) < torch.tensor([[16], [15]])).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3] = ids[:, 3]
    special = torch.isin(ids, torch.tensor([CLS_ID, SEP_ID, PAD_ID]))
    batch = {
        "input_ids": ids.masked_fill(labels != IGNORE_INDEX, MASK_ID),
        "labels": labels,
        "attention_mask": attention,
        "special_tokens_mask": special,
    }
    sub = ms(batch, branch="sub", seed=0)
    parts = mk_mlm.mlm_parts(ms.model)
    row_keep = torch.tensor([8, 7])  # floor(16 / 2), floor(15 / 2)
    valid = torch.arange(sub.ids.shape[1]) < row_keep[:, None]
    with torch.no_grad():
        out = parts.encoder(
            input_ids=batch["input_ids"].gather(1, sub.ids), attention_mask=valid.long(), position_ids=sub.ids
        )
        want = parts.transform(out.last_hidden_state)
    torch.testing.assert_close(sub.hidden.detach()[valid], want[valid])


def test_the_head_takes_autocasts_dtype_for_fp32_head_inputs():
    """_head: autocast's dtype when autocast is on for the device, even where the head inputs arrive in fp32 (a GPU's
    LayerNorm under autocast; on a CPU they are bf16 already, so a training run cannot tell)."""
    parts = mk_mlm.mlm_parts(tiny_bert())
    hidden = torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, w, b = mk_mlm._head(parts, hidden)
    assert h.dtype == w.dtype == b.dtype == torch.bfloat16
    h, w, b = mk_mlm._head(parts, hidden)
    assert h.dtype == w.dtype == b.dtype == torch.float32


@pytest.mark.parametrize("schedule", ["joint", "sequential"])
def test_unequal_branch_weights_weight_their_own_terms(schedule):
    # (helper-193: every MLM test used the published 1/2 and 1/2, which cannot tell the weights apart)
    # main_weight=1, sub_weight=0: the gradients are the model's own MLM loss's (the main term alone); and the
    # reported loss is main_weight * loss_main + sub_weight * loss_sub, loss_main being that MLM loss
    batch = make_batch(batch=3, seed=2)
    reference = tiny_bert()
    own = reference(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    own.backward()
    for weights in ((1.0, 0.0), (0.2, 0.8)):
        ms = MaskSub(tiny_bert(), mask_ratio=0.5, main_weight=weights[0], sub_weight=weights[1])
        out = ms.train_step(batch, None, torch.optim.SGD(ms.parameters(), lr=0.0), seed=9, schedule=schedule)
        torch.testing.assert_close(out["loss_main"], own.detach(), atol=1e-5, rtol=1e-5)
        weighted = weights[0] * out["loss_main"] + weights[1] * out["loss_sub"]
        torch.testing.assert_close(out["loss"], weighted, atol=1e-5, rtol=1e-5)
        if weights == (1.0, 0.0):
            for name, expected in _grads(reference).items():
                torch.testing.assert_close(_grads(ms.model)[name], expected, atol=2e-5, rtol=1e-4, msg=name)


def test_int32_batches_evaluate_as_int64_ones():
    # check_batch accepts int32 labels and training takes them; evaluation gave cross_entropy's raw dtype error
    # (helper-193)
    ms = MaskSub(tiny_bert(), mask_ratio=0.5).eval()
    batch = make_batch(batch=3, seed=2)
    narrow = {key: value.int() if value.dtype == torch.int64 else value for key, value in batch.items()}
    want, got = ms(batch), ms(narrow)
    for key in ("loss", "correct", "count"):
        torch.testing.assert_close(got[key], want[key], msg=key)
