"""The token selection's PyTorch reference: the oracle every backend is tested against, and the torch backend's
selection (its gather and scatter run _token_rows.py's whole-row copies, bit for bit these).

Maths: token_select.py's module docstring (docs/semantics.md §2-§4).
"""

from __future__ import annotations

import torch

from .._philox import sort_keys

# The keys of the priority classes (module docstring): §2's key with the draw 0 or 2^32 - 1.
ALWAYS_KEEP_KEY = -(2**63)  # + p
DROP_FIRST_KEY = (2**31 - 1) << 32  # + N + p


def priority_keys(
    keys: torch.Tensor, always_keep: torch.Tensor | None, drop_first: torch.Tensor | None
) -> torch.Tensor:
    """int64 [B, N]: §2's sort keys with the always-keep and drop-first classes folded in (module docstring).
    Without masks the keys are returned unchanged (the +N on draw-0 keys would not change their order)."""
    if always_keep is None and drop_first is None:
        return keys
    num_tokens = keys.shape[1]
    positions = torch.arange(num_tokens, dtype=torch.int64, device=keys.device)
    keys = torch.where((keys >> 32) == -(2**31), keys + num_tokens, keys)  # draw 0: above every always-keep key
    if drop_first is not None:
        keys = torch.where(drop_first, DROP_FIRST_KEY + num_tokens + positions, keys)
    if always_keep is not None:  # last: it wins over drop_first
        keys = torch.where(always_keep, ALWAYS_KEEP_KEY + positions, keys)
    return keys


def select_reference(
    seed: int,
    batch_size: int,
    num_tokens: int,
    num_keep: int,
    device: torch.device,
    ordered: bool,
    always_keep: torch.Tensor | None = None,
    drop_first: torch.Tensor | None = None,
) -> torch.Tensor:
    """ids int64 [B, K]: the K smallest sort keys of each row (keys are unique, so topk is exact)."""
    keys = priority_keys(sort_keys(seed, batch_size, num_tokens, device), always_keep, drop_first)
    ids = torch.topk(keys, num_keep, dim=1, largest=False, sorted=True).indices
    return ids.sort(dim=1).values if ordered else ids


def _spill_slot(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """ids as int64 with every out-of-range id (possible only when the caller skipped validation) sent to slot
    N, one past the tokens: the references scatter into an extra slot that is dropped, and gather zeros from it, as
    the kernels read and write nothing for such an id."""
    ids = ids.long()
    return torch.where((ids >= 0) & (ids < num_tokens), ids, num_tokens)


def inverse_reference(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """inv int32 [B, N]: inv[b, ids[b, j]] = j, -1 elsewhere."""
    batch_size, num_keep = ids.shape
    inv = torch.full((batch_size, num_tokens + 1), -1, dtype=torch.int32, device=ids.device)
    ranks = torch.arange(num_keep, dtype=torch.int32, device=ids.device).expand(batch_size, num_keep)
    return inv.scatter_(1, _spill_slot(ids, num_tokens), ranks)[:, :num_tokens].contiguous()


def gather_reference(x: torch.Tensor, ids: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Y[B, P+K, D] from X[B, P+N, D] (gather with an expanded index: no index copy of D times)."""
    batch_size, seq_len, dim = x.shape
    padded = torch.cat([x, x.new_zeros(batch_size, 1, dim)], dim=1)  # the zero row that out-of-range ids read
    prefix = torch.arange(num_prefix_tokens, device=x.device).expand(batch_size, num_prefix_tokens)
    rows = torch.cat([prefix, _spill_slot(ids, seq_len - num_prefix_tokens) + num_prefix_tokens], dim=1)
    return torch.gather(padded, 1, rows[:, :, None].expand(-1, -1, dim)).contiguous()


def scatter_reference(grad_y: torch.Tensor, ids: torch.Tensor, num_prefix_tokens: int, num_tokens: int) -> torch.Tensor:
    """dX[B, P+N, D] from dY[B, P+K, D]: prefix rows copied, kept rows scattered, the rest zero."""
    batch_size, _, dim = grad_y.shape
    grad_x = grad_y.new_zeros(batch_size, num_prefix_tokens + num_tokens + 1, dim)  # + the dropped spill row
    grad_x[:, :num_prefix_tokens] = grad_y[:, :num_prefix_tokens]
    index = _spill_slot(ids, num_tokens)[:, :, None].expand(-1, -1, dim)
    grad_x[:, num_prefix_tokens:].scatter_(1, index, grad_y[:, num_prefix_tokens:])
    return grad_x[:, :-1].contiguous()
