"""The torch backend's (the CPU path's) token gather and scatter: token_select.py's references, bit for bit, by
whole-row copies.

torch.gather / scatter_ with an index expanded over D move one element per index entry (2.1 ms for a ViT-S batch
of 32 on one CPU core, plus the padded copy of X); index_select / index_copy_ move [D] rows (0.6 ms). The spill
row of out-of-range ids (possible only unvalidated) needs the references' padding: the fast path runs when every
id is in range, which a CPU tensor tells without a sync; other devices run the references (the torch backend is
the CPU one).
"""

from __future__ import annotations

import torch

from ._token_select_reference import gather_reference, scatter_reference


def _flat_rows(ids: torch.Tensor, num_prefix_tokens: int, seq_len: int) -> torch.Tensor | None:
    """int64 [B * (P+K)]: the row of X[B * (P+N), D] behind each row of Y (prefix rows, then P + ids), or None
    when the rows cannot be trusted without the references' spill row (an id out of range, or not a CPU tensor)."""
    num_tokens = seq_len - num_prefix_tokens
    if ids.device.type != "cpu" or (ids.numel() and not bool(((ids >= 0) & (ids < num_tokens)).all())):
        return None
    batch_size = ids.shape[0]
    prefix = torch.arange(num_prefix_tokens, device=ids.device).expand(batch_size, num_prefix_tokens)
    rows = torch.cat([prefix, ids.long() + num_prefix_tokens], dim=1)
    return (rows + torch.arange(0, batch_size * seq_len, seq_len, device=ids.device)[:, None]).flatten()


def gather_rows(x: torch.Tensor, ids: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """gather_reference(x, ids, num_prefix_tokens), bit for bit, by an index_select of whole rows."""
    batch_size, seq_len, dim = x.shape
    rows = _flat_rows(ids, num_prefix_tokens, seq_len)
    if rows is None:
        return gather_reference(x, ids, num_prefix_tokens)
    source = x.reshape(batch_size * seq_len, dim)  # sizes, not -1: D may be 0
    # into a [B, P+K, D] tensor of its own (a view of index_select's result would be a view output of the autograd
    # Function, which refuses in-place changes such as y += pos_embed, where the other backends allow them)
    out = x.new_empty(batch_size, num_prefix_tokens + ids.shape[1], dim)
    torch.index_select(source, 0, rows, out=out.view(batch_size * (num_prefix_tokens + ids.shape[1]), dim))
    return out


def scatter_rows(grad_y: torch.Tensor, ids: torch.Tensor, num_prefix_tokens: int, num_tokens: int) -> torch.Tensor:
    """scatter_reference(grad_y, ids, num_prefix_tokens, num_tokens), bit for bit (ids unique, as the selection
    gives and validation checks), by an index_copy_ of whole rows into zeros."""
    batch_size, _, dim = grad_y.shape
    seq_len = num_prefix_tokens + num_tokens
    rows = _flat_rows(ids, num_prefix_tokens, seq_len)
    if rows is None:
        return scatter_reference(grad_y, ids, num_prefix_tokens, num_tokens)
    grad_x = grad_y.new_zeros(batch_size * seq_len, dim)
    source = grad_y.reshape(batch_size * (num_prefix_tokens + ids.shape[1]), dim)
    return grad_x.index_copy_(0, rows, source).view(batch_size, seq_len, dim)
