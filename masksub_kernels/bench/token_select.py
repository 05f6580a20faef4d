"""Benchmark cases for random token selection + gather (ViT sub-branch), against the styles users have today.

- official: rand + argsort + gather with an index repeated D times (int64 [B, K, D]) + concatenation of the class
  token (the MaskSub/MAE code);
- timm: argsort(randn) + gather with an expanded index (no copy) + concatenation (timm PatchDropout);
- compile(official): torch.compile of the official style;
- masksub[<backend>]: this library's random_token_select on each backend that runs on the device.
Minimal bytes: forward reads and writes the B*(P+K) kept rows; backward reads dY and writes all of dX.
"""

from __future__ import annotations

import torch

import masksub_kernels as mk

from .runner import OpCase, library_first

GPU_SHAPES = [("ViT-S", 256, 196, 384), ("ViT-B", 256, 196, 768), ("ViT-L", 256, 196, 1024), ("ViT-B", 256, 1024, 768)]
CPU_SHAPES = [("ViT-S", 32, 196, 384)]
MASK_RATIO = 0.5


def official_style(x: torch.Tensor, mask_ratio: float = MASK_RATIO) -> torch.Tensor:
    cls_token, patches = x[:, :1], x[:, 1:]
    batch_size, num_tokens, dim = patches.shape
    num_keep = int(num_tokens * (1 - mask_ratio))
    noise = torch.rand(batch_size, num_tokens, device=x.device)
    ids_keep = torch.argsort(noise, dim=1)[:, :num_keep]
    kept = torch.gather(patches, 1, ids_keep.unsqueeze(-1).repeat(1, 1, dim))
    return torch.cat([cls_token, kept], dim=1)


def timm_style(x: torch.Tensor, mask_ratio: float = MASK_RATIO) -> torch.Tensor:
    prefix, patches = x[:, :1], x[:, 1:]
    batch_size, num_tokens, _ = patches.shape
    num_keep = int(num_tokens * (1 - mask_ratio))
    keep = torch.argsort(torch.randn(batch_size, num_tokens, device=x.device), dim=-1)[:, :num_keep]
    kept = patches.gather(1, keep.unsqueeze(-1).expand((-1, -1, *patches.shape[-1:])))
    return torch.cat([prefix, kept], dim=1)


def library_providers(device: torch.device) -> list[str]:
    """Backends of this library that run on ``device`` (on CPU: the PyTorch reference only; the Triton interpreter
    is a correctness tool, not a speed one)."""
    if device.type != "cuda":
        return ["torch"]
    return [name for name in mk.available_backends() if name in ("triton", "cuda")]


def cases(device: torch.device, *, full: bool = False, tiny: bool = False) -> list[OpCase]:
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    dtypes = (torch.bfloat16,) if device.type == "cuda" else (torch.float32,)
    if full:
        dtypes = (torch.bfloat16, torch.float16, torch.float32)
    if tiny:
        shapes, dtypes = [("tiny", 2, 16, 8)], (torch.float32,)
    result = []
    for name, batch_size, num_tokens, dim in shapes:
        for dtype in dtypes:
            # static shapes (dynamic=False): otherwise dynamo recompiles for dynamic shapes at the second shape,
            # and the later cases time another kind of graph (the recompile limit: cli._allow_recompiles)
            compiled = torch.compile(official_style, dynamic=False)
            num_keep = int(num_tokens * (1 - MASK_RATIO))
            element = torch.tensor([], dtype=dtype).element_size()
            rows_out, rows_in = batch_size * (1 + num_keep), batch_size * (1 + num_tokens)
            nbytes = {
                "forward": 2 * rows_out * dim * element,
                "backward": (rows_out + rows_in) * dim * element,
            }
            nbytes["full"] = nbytes["forward"] + nbytes["backward"]

            def make_inputs(b=batch_size, n=num_tokens, d=dim, dt=dtype):
                return [torch.randn(b, 1 + n, d, device=device, dtype=dt, requires_grad=True)]

            providers = {f"masksub[{backend}]": backend for backend in library_providers(device)}
            label = f"{name} B={batch_size} N={num_tokens} D={dim}"
            for provider, backend in providers.items():
                result.append(
                    OpCase(
                        "token_select",
                        label,
                        str(dtype).removeprefix("torch."),
                        provider,
                        make_inputs,
                        lambda x: mk.random_token_select(x, MASK_RATIO)[0],
                        nbytes,
                        setup=lambda b=backend: mk.set_backend(b),
                    )
                )
            for provider, fn in (("official", official_style), ("timm", timm_style), ("compile(official)", compiled)):
                result.append(
                    OpCase("token_select", label, str(dtype).removeprefix("torch."), provider, make_inputs, fn, nbytes)
                )
    return library_first(result)  # the kernels of every shape first: a capped suite keeps them (runner.py)
