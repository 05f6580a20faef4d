"""training/augment.py: the command's options reach the transforms (helper-171's mutation audit)."""

from masksub_kernels.train import build_parser
from masksub_kernels.training.augment import build_transforms


def test_scale_reaches_the_random_resized_crop():
    args = build_parser().parse_args(["--scale", "0.3", "0.6"])
    train, _ = build_transforms(args, 32, (0.5,) * 3, (0.5,) * 3)
    assert tuple(train.transforms[0].scale) == (0.3, 0.6)
