"""BERT / RoBERTa masked-language-model sub-branch: token dropping on top of the usual MLM recipe.

docs/semantics.md, §10 (our reading of the paper, which gives no code for BERT). One batch holds ``input_ids``
[B, L] already corrupted by the main branch's recipe (``mlm_corrupt``: 15% of the non-special tokens chosen; of
those 80% [MASK], 10% a random token, 10% unchanged) and ``labels`` [B, L] (the original token at the chosen
positions, -100 elsewhere), optionally ``attention_mask``, ``token_type_ids`` and ``special_tokens_mask``.

    main:  h = T(encoder(input_ids))                     [B, L, D]     T = the MLM head's transform (dense, act, LN)
    sub:   ids = random_keep_indices(B, L, K, always_keep = labels != -100 or special, drop_first = padding)
           h_s = T(encoder(input_ids[ids], positions[ids], ...))   [B, K, D],   K = floor(L (1 - r))
    loss:  linear_masksub_loss(h[ids], h_s, W, b, labels[ids])    W = the (tied) decoder weight [V, D], b [V]

so the sub-branch learns stopgrad(softmax(h W^T + b)) at the predicted positions (every one of which it keeps) and
no [rows, V] logits exist. Embeddings act per token (word + position + type embeddings, LayerNorm, dropout), so
embedding the kept tokens at their original positions is exactly dropping tokens after the embeddings, and cheaper.
With ``sub_fill='mask'`` the sub-branch instead sees the whole sequence with the dropped tokens replaced by [MASK].

Padded batches: padding is dropped first, and row b keeps K_b = max(floor(L_b (1 - r)), its always-kept count) of
its L_b real tokens; the K - K_b slots left over are masked out of attention and of the loss. The kept slots come
in ascending sort-key order (always-kept, then random, then padding), so slot j < K_b is a real kept token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._linear_loss_checks import check_chunk_rows
from .user_warning import warn_user

IGNORE_INDEX = -100  # Hugging Face's label for positions that are not predicted
SUB_FILLS = ("drop", "mask")

__all__ = ["IGNORE_INDEX", "SUB_FILLS", "MLMParts", "MLMSub", "is_mlm", "mlm_corrupt", "mlm_parts"]


class MLMSub(NamedTuple):
    """The sub-branch's output: head inputs ``hidden`` [B, K, D] of the kept tokens, their positions ``ids`` int64
    [B, K] in the full sequence, and their labels ``target`` int64 [B, K] (-100 where nothing is predicted)."""

    hidden: torch.Tensor
    ids: torch.Tensor
    target: torch.Tensor


@dataclass(frozen=True)
class MLMParts:
    """The pieces of a masked-LM model that the branches call: the encoder (embeddings + layers, the public
    ``forward(input_ids, attention_mask, token_type_ids, position_ids)``), the head's transform and its decoder."""

    encoder: nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]
    decoder: nn.Linear
    padding_idx: int | None  # RoBERTa-style positions count from padding_idx + 1 and skip padding; None: BERT's 0..L-1


def _roberta_transform(head: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda h: head.layer_norm(F.gelu(head.dense(h)))  # RobertaLMHead.forward without its decoder


def mlm_parts(model: nn.Module) -> MLMParts | None:
    """The parts of a Hugging Face ``BertForMaskedLM`` or a RoBERTa-style ``*ForMaskedLM`` (``roberta`` +
    ``lm_head`` with dense, layer_norm, decoder: RoBERTa, XLM-R, CamemBERT), found by structure; None otherwise."""
    cls = getattr(model, "cls", None)
    predictions = getattr(cls, "predictions", None)
    if hasattr(model, "bert") and hasattr(predictions, "transform") and hasattr(predictions, "decoder"):
        return MLMParts(model.bert, predictions.transform, predictions.decoder, None)
    head = getattr(model, "lm_head", None)
    if hasattr(model, "roberta") and all(hasattr(head, name) for name in ("dense", "layer_norm", "decoder")):
        padding_idx = getattr(model.roberta.embeddings, "padding_idx", None)
        return MLMParts(model.roberta, _roberta_transform(head), head.decoder, padding_idx)
    return None


def is_mlm(model: nn.Module) -> bool:
    """True for a Hugging Face masked-LM model of BERT or RoBERTa structure (see ``mlm_parts``)."""
    return mlm_parts(model) is not None


def check_mlm_model(model: nn.Module, fill: str) -> None:
    """Refuse the models of BERT structure that this family would train wrongly: a decoder (causal attention, not
    a masked LM), a model with heads besides the MLM one (BertForPreTraining's next-sentence head and pooler would
    get no gradient), and relative position embeddings when tokens are dropped (a dropped token changes the
    distances between the kept ones; ``sub_fill='mask'`` keeps every position)."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if getattr(config, "is_decoder", False):
        raise ValueError(f"{name} is configured as a decoder (causal attention): the mlm family trains masked LMs")
    if hasattr(getattr(model, "cls", None), "seq_relationship"):
        raise ValueError(
            f"{name} has a next-sentence head besides the MLM head: it would get no gradient here; use "
            "BertForMaskedLM (its weights load from the same checkpoint)"
        )
    # BigBird's attention, block sparse by default: the model's own setting (set_attention_type changes it, not the
    # config's), else the config's
    encoder = getattr(model, "bert", None) or getattr(model, "roberta", None)
    attention = getattr(encoder, "attention_type", getattr(config, "attention_type", "original_full"))
    if attention != "original_full":
        raise ValueError(
            f"{name} uses attention_type={attention!r}: the sub-branch's shorter sequences make transformers switch "
            "it to full attention for good (the saved config still saying block sparse); call "
            "model.bert.set_attention_type('original_full') (or build it with attention_type='original_full')"
        )  # (helper-317, helper-319)
    positions = getattr(config, "position_embedding_type", "absolute")
    if fill == "drop" and positions not in (None, "absolute"):
        raise ValueError(
            f"{name} uses {positions!r} position embeddings: dropping tokens would change the distances between the "
            "kept ones; use sub_fill='mask'"
        )


def check_options(model: nn.Module, loss: str, target_threshold: float | None, fill: str,
                  mask_token_id: int | None, cell_size: int | None, chunk_rows: int | None):  # fmt: skip
    """MaskSub's options for this family, checked against the model: (its parts, ``fill``, the [MASK] id (the
    config's by default with ``fill='mask'``, else None), rows per chunk of the fused-linear loss (None: the
    backend's rule))."""
    chunk_rows = check_chunk_rows(chunk_rows) or None  # the fused-linear loss's own check (its message)
    if loss != "ce" or target_threshold is not None:
        raise ValueError("the mlm family predicts one token per position: it needs loss='ce' (softmax)")
    if cell_size is not None:
        raise ValueError("cell_size is an option of the grid masks; the mlm family drops tokens (mask_ratio)")
    if fill not in SUB_FILLS:
        raise ValueError(f"sub_fill must be one of {SUB_FILLS}, got {fill!r}")
    check_mlm_model(model, fill)
    parts = mlm_parts(model)
    vocab_size = parts.decoder.weight.shape[0]
    if mask_token_id is None and fill == "mask":
        mask_token_id = getattr(getattr(model, "config", None), "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError("sub_fill='mask' needs mask_token_id (the model's config has none)")
    if mask_token_id is not None and (
        isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab_size
    ):
        raise ValueError(f"mask_token_id must be an int in [0, vocab size {vocab_size}), got {mask_token_id!r}")
    if mask_token_id is not None and fill == "drop":
        raise ValueError(f"mask_token_id={mask_token_id} goes with sub_fill='mask'; sub_fill='drop' drops tokens")
    return parts, fill, mask_token_id, chunk_rows


# ----------------------------------------------------------------------------------------------------------------
# The main branch's recipe: which tokens are predicted, and how they are corrupted (Philox: a seed reproduces it)
# ----------------------------------------------------------------------------------------------------------------


def mlm_corrupt(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor | None,
    *,
    vocab_size: int,
    mask_token_id: int,
    seed: int | None = None,
    probability: float = 0.15,
    max_kept: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (corrupted input_ids, labels), both int64 [B, L]; the inputs are not modified.

    Each non-special token (``special_tokens_mask`` bool/int [B, L], True = special; padding must be marked special)
    is chosen with probability ``probability``; a chosen token becomes [MASK] with probability 0.8, a token drawn
    uniformly from [0, vocab_size) with probability 0.1, and stays with probability 0.1. labels = the original
    token where chosen, -100 elsewhere. The three uniforms of token (b, p) are Philox draws at offsets
    3 (b L + p) + k, k = 0, 1, 2, with ``seed``: the same seed gives the same corruption on every device (None: a
    seed drawn from torch's default generator, so ``torch.manual_seed`` reproduces it).

    ``max_kept`` (MaskSub's K = ``num_kept_tokens(L, mask_ratio)``, or None: no cap): a row's chosen and special
    tokens, which the sub-branch must all keep, number at most K: a row that draws more keeps its first K - s
    chosen ones (in position order; s its special tokens) and leaves the rest unchosen, so that no batch stops
    the run (a row over K is refused by the sub-branch). At BERT's 15% such rows are rare (e.g. ~1e-8 of 64-token
    blocks at r = 0.5); a row with more than K special tokens cannot be helped. Padding is special but not kept by
    the sub-branch (it is dropped first): pass the batch's ``attention_mask`` (int/bool [B, L], 0 = padding) with
    padded rows, so that s counts only the special tokens that are not padding.
    """
    from .._philox import new_seed, philox_uint32

    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {_describe(input_ids)}")
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an int64 or int32 [batch, length] tensor, got {_describe(input_ids)}")
    if special_tokens_mask is not None:
        _check_like_ids("special_tokens_mask", special_tokens_mask, input_ids)
    if attention_mask is not None:
        _check_like_ids("attention_mask", attention_mask, input_ids)
    for name, value in (("vocab_size", vocab_size), ("mask_token_id", mask_token_id)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"{name} must be an int >= 0, got {value!r}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must be in [0, vocab_size={vocab_size}), got {mask_token_id}")
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be a float in (0, 1], got {probability!r}")
    if max_kept is not None and (isinstance(max_kept, bool) or not isinstance(max_kept, int) or max_kept < 0):
        raise ValueError(f"max_kept must be an int >= 0 (or None: no cap), got {max_kept!r}")
    seed = new_seed(seed)
    input_ids = input_ids.long()
    batch, length = input_ids.shape
    offsets = torch.arange(batch * length * 3, device=input_ids.device).view(batch, length, 3)
    draws = philox_uint32(seed, offsets)
    uniform = draws[..., :2].double() / 2.0**32  # in [0, 1)
    chosen = uniform[..., 0] < probability
    if special_tokens_mask is not None:
        chosen &= ~special_tokens_mask.bool()
    if max_kept is not None:  # the first (K - kept specials) chosen of each row (no host sync: a cumulative count)
        kept = torch.zeros_like(chosen) if special_tokens_mask is None else special_tokens_mask.bool()
        if attention_mask is not None:  # padding: dropped by the sub-branch, it takes no slot of K
            kept = kept & attention_mask.ne(0)
        chosen &= chosen.cumsum(1) <= max_kept - kept.sum(1, keepdim=True)
    to_mask = chosen & (uniform[..., 1] < 0.8)
    to_random = chosen & (uniform[..., 1] >= 0.8) & (uniform[..., 1] < 0.9)
    corrupted = torch.where(to_mask, mask_token_id, input_ids)
    corrupted = torch.where(to_random, draws[..., 2] % vocab_size, corrupted)
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    return corrupted, labels


def _check_like_ids(name: str, value: Any, input_ids: torch.Tensor) -> None:
    """A per-token tensor: [batch, length] like input_ids, on its device (TypeError / ValueError otherwise)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (or absent), got {_describe(value)}")
    if value.shape != input_ids.shape or value.device != input_ids.device:
        raise ValueError(
            f"{name} must be shaped like input_ids {tuple(input_ids.shape)} on {input_ids.device}, got "
            f"{_describe(value)} on {value.device}"
        )


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# ----------------------------------------------------------------------------------------------------------------
# The two branches
# ----------------------------------------------------------------------------------------------------------------


def check_batch(batch: Any, need_labels: bool, parts: MLMParts | None = None) -> None:
    """A batch is a mapping with ``input_ids`` int [B, L] and (for training) ``labels`` int [B, L]; the optional
    ``attention_mask``, ``token_type_ids``, ``special_tokens_mask`` are [B, L] on the same device; with ``parts``,
    L within the model's absolute position embeddings."""
    if not hasattr(batch, "keys") or "input_ids" not in batch:
        raise TypeError(
            "the mlm family takes a batch mapping with 'input_ids' (and 'labels', optionally 'attention_mask', "
            f"'token_type_ids', 'special_tokens_mask'), got {_describe(batch)}"
        )
    input_ids = batch["input_ids"]
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"batch['input_ids'] must be a torch.Tensor, got {_describe(input_ids)}")
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an integer [batch, length] tensor, got {_describe(input_ids)}")
    if need_labels and batch.get("labels") is None:
        raise ValueError("the MaskSub step needs batch['labels'] (-100 at positions that are not predicted)")
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and (
        labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool
    ):
        raise ValueError(
            "batch['labels'] must be integer token ids [batch, length] (-100 where not predicted), got "
            f"{_describe(labels)}"
        )
    for name in ("labels", "attention_mask", "token_type_ids", "special_tokens_mask"):
        if batch.get(name) is not None:
            _check_like_ids(f"batch[{name!r}]", batch[name], input_ids)
    if batch.get("position_ids") is not None:  # (it was silently ignored by both branches: helper-317)
        raise ValueError(
            "batch['position_ids'] is not read by the mlm family (both branches number the tokens 0..L-1, the sub-"
            "branch keeping its tokens' original positions): remove it from the batch"
        )
    longest = None if parts is None else max_length(parts)
    if longest is not None and input_ids.shape[1] > longest:
        if parts.padding_idx is not None and int((input_ids != parts.padding_idx).sum(1).max()) <= longest:
            return  # RoBERTa numbers the tokens that are not padding: the rows fit (read on the host, this path only)
        raise ValueError(
            f"sequences of {input_ids.shape[1]} tokens are longer than the model's {longest} positions "
            f"(max_position_embeddings): truncate the sequences to {longest} tokens (masksub-train-mlm: --seq-len) or "
            "use a model with more positions"
        )


def max_length(parts: MLMParts) -> int | None:
    """The longest sequence the encoder's absolute position embeddings cover (RoBERTa's positions start at
    padding_idx + 1 and count the tokens that are not padding), or None where it has none (relative or rotary
    positions)."""
    table = getattr(getattr(parts.encoder, "embeddings", None), "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    return table.num_embeddings - (0 if parts.padding_idx is None else parts.padding_idx + 1)


def _positions(parts: MLMParts, input_ids: torch.Tensor) -> torch.Tensor:
    """The position ids the encoder uses by default: 0..L-1 (BERT), or RoBERTa's count of the non-padding tokens
    from padding_idx + 1 (padding at padding_idx)."""
    if parts.padding_idx is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    real = (input_ids != parts.padding_idx).long()
    return torch.cumsum(real, dim=1) * real + parts.padding_idx


def main_hidden(parts: MLMParts, batch) -> torch.Tensor:
    """The main branch: head inputs [B, L, D] of every position (the model's own forward up to the decoder)."""
    out = parts.encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        token_type_ids=batch.get("token_type_ids"),
    )
    return parts.transform(out.last_hidden_state)


NO_SPECIAL_MASK = (
    "MaskSub mlm: a batch without 'special_tokens_mask' reached the sub-branch, which then drops [CLS] / [SEP] like "
    "any other token (it always keeps only the predicted positions; [PAD] is read from attention_mask). "
    "transformers' DataCollatorForLanguageModeling drops the mask, as does the plain Trainer's column filter "
    "(MaskSubTrainer keeps it, and rebuilds it from the tokenizer given as its processing_class): put it back, "
    "e.g. batch['special_tokens_mask'] = torch.isin(batch['input_ids'], "
    "torch.tensor(tokenizer.all_special_ids)), to keep them (docs/training.md, the mlm family). Warned once per MaskSub"
)


def warn_no_special_mask(owner: nn.Module, batch) -> None:
    """A UserWarning, once per ``owner`` (the MaskSub), when ``batch`` has no special_tokens_mask (the
    sub-branch then drops [CLS] / [SEP]). A dictionary lookup on the host: no sync."""
    if torch.compiler.is_compiling():  # (a MaskSub compiled whole: a warning would break its graph)
        return
    if batch.get("special_tokens_mask") is None and not getattr(owner, "_warned_no_special_mask", False):
        object.__setattr__(owner, "_warned_no_special_mask", True)
        warn_user(NO_SPECIAL_MASK)


def sub_branch(
    parts: MLMParts, batch, mask_ratio: float, seed: int | torch.Tensor, fill: str, mask_token_id: int | None
) -> MLMSub:
    """The sub-branch (module docstring): keep K = floor(L (1 - r)) tokens per row, always the predicted and the
    special ones, padding dropped first; with ``fill='mask'`` the dropped tokens become [MASK] instead."""
    import masksub_kernels as mk

    input_ids, labels = batch["input_ids"], batch["labels"]
    attention_mask, token_types = batch.get("attention_mask"), batch.get("token_type_ids")
    special = batch.get("special_tokens_mask")
    batch_size, length = input_ids.shape
    num_keep = mk.num_kept_tokens(length, mask_ratio)
    always_keep = labels != IGNORE_INDEX
    if special is not None:
        always_keep = always_keep | special.bool()
    padding = attention_mask == 0 if attention_mask is not None else None
    if padding is not None:
        always_keep = always_keep & ~padding  # [PAD] is special (never predicted) but dropped first, not kept
    if input_ids.is_cuda:  # CPU tensors: the op checks it; on a GPU a device-side assert, no host sync
        torch._assert_async(
            (always_keep.sum(dim=1) <= num_keep).all(),
            "MaskSub mlm: a row has more predicted + special tokens than the sub-branch keeps (K)",
        )
    try:
        ids = mk.random_keep_indices(
            batch_size, length, num_keep, seed=seed, device=input_ids.device, always_keep=always_keep,
            drop_first=padding,
        )  # fmt: skip
    except ValueError as exc:  # CPU tensors: the op's check, in the terms of the mlm family's options
        if "always_keep marks" not in str(exc):  # (the op's count check; its shape / device errors as they are)
            raise
        counts = always_keep.sum(dim=1)  # (CPU tensors: the op's own check read them already)
        raise ValueError(
            f"MaskSub mlm: mask_ratio={mask_ratio} keeps K={num_keep} of {length} tokens per row, but row "
            f"{int(counts.argmax())} has {int(counts.max())} predicted + special tokens, all of which the sub-branch "
            f"must keep: cap them with mlm_corrupt(..., max_kept={num_keep}) (masksub_kernels.training.mlm), or lower "
            "mask_ratio, or predict fewer tokens"
        ) from exc
    slot_valid = None
    if attention_mask is not None:  # row b uses its first K_b slots (module docstring)
        real = attention_mask.ne(0).sum(dim=1)
        row_keep = torch.maximum(torch.floor(real.double() * (1.0 - mask_ratio)).long(), always_keep.sum(dim=1))
        slot_valid = torch.arange(num_keep, device=ids.device) < row_keep[:, None]
    take = lambda t: t.gather(1, ids)
    if fill == "drop":
        out = parts.encoder(
            input_ids=take(input_ids),
            attention_mask=slot_valid.long() if slot_valid is not None else None,
            token_type_ids=take(token_types) if token_types is not None else None,
            position_ids=take(_positions(parts, input_ids)),
        )
        hidden = parts.transform(out.last_hidden_state)
    else:
        kept = torch.zeros_like(input_ids, dtype=torch.bool)
        if slot_valid is not None:
            kept.scatter_(1, ids, slot_valid)
        else:
            kept.scatter_(1, ids, True)
        if padding is not None:
            kept |= padding  # padding stays padding (masked out of attention anyway)
        sub_ids = torch.where(kept, input_ids, mask_token_id)
        out = parts.encoder(input_ids=sub_ids, attention_mask=attention_mask, token_type_ids=token_types)
        hidden = parts.transform(mk.gather_tokens(out.last_hidden_state, ids, num_prefix_tokens=0))
    target = take(labels)
    if slot_valid is not None:
        target = torch.where(slot_valid, target, IGNORE_INDEX)
    return MLMSub(hidden, ids, target)


# ----------------------------------------------------------------------------------------------------------------
# Criteria through the fused-linear loss: never [rows, V] logits
# ----------------------------------------------------------------------------------------------------------------


def _head(parts: MLMParts, *hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(hidden states..., decoder weight [V, D], bias [V]) in one dtype: autocast's dtype when autocast is on for
    their device (what it would give the decoder's linear layer: on a GPU the head's LayerNorm returns fp32 head
    inputs under autocast, on a CPU bf16), else the hidden states' dtype."""
    device = hidden[0].device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden[0].dtype
    weight, bias = parts.decoder.weight, parts.decoder.bias
    return (*(h.to(dtype) for h in hidden), weight.to(dtype), bias.to(dtype) if bias is not None else None)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def main_loss(
    parts: MLMParts,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """CE of the decoder's logits at the predicted positions (mean over them), fp32 scalar; chunk_rows: the
    fused-linear loss's rows per chunk (None: the backend's rule)."""
    import masksub_kernels as mk

    hidden, weight, bias = _head(parts, hidden)
    return mk.linear_soft_target_cross_entropy(
        _rows(hidden),
        weight,
        bias,
        labels.reshape(-1),
        label_smoothing=label_smoothing,
        ignore_index=IGNORE_INDEX,
        chunk_rows=chunk_rows,
    )


def masksub_terms(
    parts: MLMParts,
    hidden: torch.Tensor,
    sub: MLMSub,
    *,
    main_weight: float,
    sub_weight: float,
    label_smoothing: float,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused MaskSub loss on the kept rows: (loss, main, sub) fp32 scalars. Every predicted position is kept,
    so the main term equals ``main_loss`` over the whole sequence. ``hidden`` detached gives the sub term alone.
    chunk_rows: the fused-linear loss's rows per chunk (None: the backend's rule)."""
    import masksub_kernels as mk

    main_rows, sub_rows, weight, bias = _head(parts, mk.gather_tokens(hidden, sub.ids, num_prefix_tokens=0), sub.hidden)
    return mk.linear_masksub_loss(
        _rows(main_rows),
        _rows(sub_rows),
        weight,
        bias,
        sub.target.reshape(-1),
        main_weight=main_weight,
        sub_weight=sub_weight,
        label_smoothing=label_smoothing,
        ignore_index=IGNORE_INDEX,
        chunk_rows=chunk_rows,
    )


@torch.no_grad()
def evaluate_batch(parts: MLMParts, batch) -> dict[str, torch.Tensor]:
    """Held-out MLM metrics of one batch: {'loss_sum', 'correct', 'count'} (fp32 / int64 device scalars), from the
    logits of the predicted rows only (a boolean index: evaluation may synchronise)."""
    hidden = main_hidden(parts, batch)
    labels = batch["labels"].reshape(-1)
    rows = labels != IGNORE_INDEX
    logits = parts.decoder(_rows(hidden)[rows]).float()
    picked = labels[rows].long()  # (int32 labels train as int64 ones: cross_entropy takes int64 only)
    outside = picked[(picked < 0) | (picked >= logits.shape[1])]  # the training loss's check (cross_entropy: an
    if outside.numel():  # IndexError on the CPU, a device assert on a GPU)
        raise ValueError(f"class ids must be in [0, {logits.shape[1]}) or ignore_index={IGNORE_INDEX}, got "
                         f"{int(outside[0])}")  # fmt: skip
    return {
        "loss_sum": F.cross_entropy(logits, picked, reduction="sum"),
        "correct": (logits.argmax(dim=1) == picked).sum(),
        "count": rows.sum(),
    }
