"""masksub_kernels: fused GPU kernels and a training layer for MaskSub (arXiv 2306.11339).

``import masksub_kernels as mk`` gives the public ops; every op runs on the backend chosen by
``mk.set_backend`` / ``MASKSUB_BACKEND`` (``auto``: Triton for CUDA tensors, the PyTorch reference on CPU),
and ``mk.last_backend(op)`` says which one ran. Importing the package never touches a GPU.
"""

from ._backend import (
    available_backends,
    get_backend,
    last_backend,
    resolve_backend,
    set_backend,
    triton_interpreted,
    use_backend,
)
from ._philox import philox_uint32
from .ops._linear_loss_chunks import capture_safe
from .ops.grid_mask import mask_image_grid, random_grid_mask
from .ops.linear_masksub_loss import linear_masksub_loss, linear_soft_target_cross_entropy
from .ops.losses import (
    MaskSubLoss,
    masksub_loss,
    self_distillation_loss,
    soft_target_bce,
    soft_target_cross_entropy,
)
from .ops.token_grid_mask import mask_tokens_grid
from .ops.token_select import gather_tokens, num_kept_tokens, random_keep_indices, random_token_select

__version__ = "0.1.0"

__all__ = [
    "MaskSubLoss",
    "available_backends",
    "capture_safe",
    "gather_tokens",
    "get_backend",
    "last_backend",
    "linear_masksub_loss",
    "linear_soft_target_cross_entropy",
    "mask_image_grid",
    "mask_tokens_grid",
    "masksub_loss",
    "num_kept_tokens",
    "philox_uint32",
    "random_grid_mask",
    "random_keep_indices",
    "random_token_select",
    "resolve_backend",
    "self_distillation_loss",
    "set_backend",
    "soft_target_bce",
    "soft_target_cross_entropy",
    "triton_interpreted",
    "use_backend",
]
