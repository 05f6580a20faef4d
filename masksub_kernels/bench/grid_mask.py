"""Benchmark cases for the grid masks: pixel-space cells for CNNs, stage-1 token cells for Swin.

- official (images): patchify into 32x32 cells, rand + argsort per sample, multiply by the cell mask,
  unpatchify (the official ResNet code's pixel-space masking);
- official (tokens): the cell mask repeated to token resolution (repeat_interleave), then
  x * (1 - m) + t * m (the official Swin code);
- compile(official): torch.compile of those;
- masksub[<backend>]: this library's mask_image_grid / mask_tokens_grid.
Minimal bytes: read the input once and write the output once (backward of tokens: read dOut, write dTokens).
"""

from __future__ import annotations

import torch

import masksub_kernels as mk

from .runner import OpCase, library_first
from .token_select import library_providers

MASK_RATIO = 0.5


def _cell_mask(batch_size: int, num_cells: int, device: torch.device) -> torch.Tensor:
    """1.0 on removed cells, [B, L] float: rand + argsort as the official code does."""
    num_keep = int(num_cells * (1 - MASK_RATIO))
    ids_shuffle = torch.argsort(torch.rand(batch_size, num_cells, device=device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_cells, device=device)
    mask[:, :num_keep] = 0
    return torch.gather(mask, 1, ids_restore)


def official_images(images: torch.Tensor, cell: int = 32) -> torch.Tensor:
    batch_size, channels, height, width = images.shape
    gh, gw = height // cell, width // cell
    patches = images.reshape(batch_size, channels, gh, cell, gw, cell).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(batch_size, gh * gw, cell * cell * channels)
    mask = _cell_mask(batch_size, gh * gw, images.device)
    patches = patches * (1 - mask).unsqueeze(-1).to(images.dtype)
    patches = patches.reshape(batch_size, gh, gw, cell, cell, channels).permute(0, 5, 1, 3, 2, 4)
    return patches.reshape(batch_size, channels, height, width)


def official_tokens(tokens: torch.Tensor, mask_token: torch.Tensor, cell: int = 8) -> torch.Tensor:
    batch_size, height, width, _ = tokens.shape
    gh, gw = height // cell, width // cell
    mask = _cell_mask(batch_size, gh * gw, tokens.device).reshape(batch_size, gh, gw)
    mask = mask.repeat_interleave(cell, 1).repeat_interleave(cell, 2).unsqueeze(-1).to(tokens.dtype)
    return tokens * (1 - mask) + mask_token * mask


def cases(device: torch.device, *, full: bool = False, tiny: bool = False) -> list[OpCase]:
    on_gpu = device.type == "cuda"
    batch_size = 256 if on_gpu else 16
    image_dtypes = (torch.float32, torch.bfloat16) if on_gpu else (torch.float32,)
    token_dtype = torch.bfloat16 if on_gpu else torch.float32
    image_hw, token_hw, channels = (224, 56, 96)
    if tiny:
        batch_size, image_hw, token_hw, channels, image_dtypes, token_dtype = (
            2,
            64,
            16,
            8,
            (torch.float32,),
            torch.float32,
        )
    # static shapes (dynamic=False): two image dtypes and one token shape, each compiled for its own shape
    compiled_images = torch.compile(official_images, dynamic=False)
    compiled_tokens = torch.compile(official_tokens, dynamic=False)
    result = []
    for dtype in image_dtypes:
        element = torch.tensor([], dtype=dtype).element_size()
        nbytes = {"forward": 2 * batch_size * 3 * image_hw * image_hw * element}

        def images(dt=dtype):
            return [torch.randn(batch_size, 3, image_hw, image_hw, device=device, dtype=dt)]

        label = f"images B={batch_size} 3x{image_hw}x{image_hw} cell 32"
        providers = [
            (f"masksub[{b}]", lambda x: mk.mask_image_grid(x, MASK_RATIO)[0], b) for b in library_providers(device)
        ]
        providers += [("official", official_images, None), ("compile(official)", compiled_images, None)]
        for provider, fn, backend in providers:
            result.append(
                OpCase(
                    "grid_mask",
                    label,
                    str(dtype).removeprefix("torch."),
                    provider,
                    images,
                    fn,
                    nbytes,
                    modes=("forward",),
                    setup=(lambda b=backend: mk.set_backend(b)) if backend else None,
                )
            )
    element = torch.tensor([], dtype=token_dtype).element_size()
    token_bytes = batch_size * token_hw * token_hw * channels * element
    nbytes = {"forward": 2 * token_bytes, "backward": 2 * token_bytes, "full": 4 * token_bytes}

    def tokens():
        x = torch.randn(batch_size, token_hw, token_hw, channels, device=device, dtype=token_dtype)
        return [x.requires_grad_(True), torch.zeros(channels, device=device, dtype=token_dtype).requires_grad_(True)]

    label = f"Swin-T tokens B={batch_size} {token_hw}x{token_hw}x{channels} cell 8"
    providers = [
        (f"masksub[{b}]", lambda x, t: mk.mask_tokens_grid(x, t, MASK_RATIO)[0], b) for b in library_providers(device)
    ]
    providers += [("official", official_tokens, None), ("compile(official)", compiled_tokens, None)]
    for provider, fn, backend in providers:
        result.append(
            OpCase(
                "grid_mask",
                label,
                str(token_dtype).removeprefix("torch."),
                provider,
                tokens,
                fn,
                nbytes,
                setup=(lambda b=backend: mk.set_backend(b)) if backend else None,
            )
        )
    return library_first(result)  # the kernels of every shape first: a capped suite keeps them (runner.py)
