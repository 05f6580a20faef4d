"""The ImageFolder transforms of the training command, from its options, all through timm's ``create_transform``.

Training: RandomResizedCrop (``--scale``, ``--train-interpolation``) + horizontal flip, then
``--aa`` (``rand-m9-mstd0.5-inc1``: RandAugment as MAE / Swin / FT-CLIP; ``3a``: DeiT-III's 3-Augment -- one of
grayscale, solarisation, Gaussian blur per image -- kept with ``--color-jitter``), ``--color-jitter`` (timm turns it
off under RandAugment / AutoAugment, as the recipes' own code did), normalisation (``--mean`` / ``--std``, else the
model's), random erasing (``--reprob``, ``--remode``, ``--recount``). ``--no-aug``: resize + centre crop only.
Validation: resize to ``img_size / --crop-pct`` then centre crop (``--crop-pct 1.0``: the whole image, DeiT-III /
FT-CLIP; 0.875: MAE / Swin), ``--interpolation``.

The embedded digits set (no ``--data-dir``) is tensors, not images: these options do not apply to it (it keeps its
random shifts) and the command says so.
"""

from __future__ import annotations

__all__ = ["AUG_OPTIONS", "build_transforms", "check_aa", "ignored_on_digits", "posterize_any_bits"]

# The options that only shape the ImageFolder transforms (and their normalisation), with the command's defaults.
AUG_OPTIONS = {
    "aa": None,
    "color_jitter": 0.4,
    "reprob": 0.0,
    "remode": "pixel",
    "recount": 1,
    "scale": None,
    "train_interpolation": "bilinear",
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "mean": None,  # the digits set normalises with its own training images' mean and std
    "std": None,
}


# The sections timm's parsers read after the first (auto_augment.py: rand_augment_transform, augment_and_mix_transform,
# auto_augment_transform): a name, then a number from its first digit on (int or float). timm skips a section without a
# digit (``inc`` for ``inc1``: RandAugment without the increasing ops) and, for ``t``, reads an unknown set as the
# default one; a repeated ``mstd`` / ``mmax`` / ``t`` keeps the first, the others the last.
_AA_SECTIONS = {
    "rand": {"m": int, "n": int, "p": float, "mstd": float, "mmax": int, "inc": int, "t": ("weights", "3aw", "3a")},
    "augmix": {"m": int, "w": int, "d": int, "b": int, "a": float, "mstd": float},
    "policy": {"mstd": float},
}
AA_POLICIES = ("original", "originalr", "v0", "v0r", "3a")  # timm's auto_augment_policy names
AA_FORMS = {
    "rand": "rand-... with m<int> n<int> p<float> mstd<float> mmax<int> inc<0|1> t<weights|3aw|3a> (the recipes' "
    "rand-m9-mstd0.5-inc1)",
    "augmix": "augmix-... with m<int> w<int> d<int> b<int> a<float> mstd<float> (e.g. augmix-m5-w4)",
    "policy": f"an AutoAugment policy ({', '.join(AA_POLICIES)}), optionally -mstd<float>",
}


def check_aa(aa: str) -> None:
    """ValueError naming the first section of ``--aa`` that timm would skip or misread (a section without a number, an
    unknown name, a number that is not one, a repeated section), and the accepted forms."""
    import math
    import re

    first, *sections = aa.split("-")
    kind = first if first in ("rand", "augmix") else "policy"
    if kind == "policy" and first not in AA_POLICIES:
        raise ValueError(
            f"--aa {aa!r}: {first!r} is not rand, augmix or a policy; accepted: {'; '.join(AA_FORMS.values())}"
        )
    seen, values = set(), {}
    for section in sections:
        if kind == "rand" and section.startswith("t"):
            key, value = "t", section[1:]
        else:
            key, value, *_ = [*re.split(r"(\d.*)", section, maxsplit=1), ""]
        kind_of = _AA_SECTIONS[kind].get(key)
        why = None
        if key in seen:
            why = "is repeated (timm keeps one of them)"
        elif not value and key != "t":
            why = "has no number (timm skips it)" + _skipped_note(aa, kind, section, sections)
        elif kind_of is None:
            why = f"is not one of {first}'s"
        elif isinstance(kind_of, tuple):
            why = None if value in kind_of else "names no transform set of timm's (read as the default)"
        else:
            try:
                number = kind_of(value)
                bad = not math.isfinite(number) or (key == "p" and not 0 <= number <= 1)
            except ValueError:
                number, bad = None, True
            if bad and key == "mstd" and number is not None:  # mstd1e999: timm's uniform sampling, spelled finite here
                why = "is not finite: write mstd101 (timm samples magnitudes uniformly for any mstd > 100)"
            elif bad:
                why = "is not a probability in [0, 1]" if key == "p" else f"is not {key}<{kind_of.__name__}>"
            elif kind == "rand" and key == "inc" and number not in (0, 1):
                why = "is not inc0 or inc1 (timm reads any other number as inc1)"
            elif kind == "rand" and key == "mmax" and number == 0:
                why = "reads as mmax10 (timm's default bound: `mmax or 10`)"
            elif key in ("m", "mmax", "mstd"):
                values[key] = number
        if why:
            raise ValueError(f"--aa {aa!r}: section {section!r} {why}; accepted: {AA_FORMS[kind]}")
        seen.add(key)
    # timm clips each drawn magnitude to [0, bound] (RandAugment's mmax, else 10; AugMix has no mmax): an m above it
    # trains as m<bound> without mstd, and with mstd draws around m (uniformly in [0, m] for mstd > 100), clipped
    magnitude, bound = values.get("m", 10 if kind == "rand" else 3), values.get("mmax", 10)  # (timm's defaults)
    if kind != "policy" and magnitude > bound:
        given = "" if "m" in values else " (timm's default)"
        if kind == "augmix":
            fix = f"write m{bound} or less (AugMix has no mmax)"
        elif values.get("mstd", 0) > 0:
            fix = f"each magnitude drawn above {bound} is clipped to it; add mmax{magnitude} to draw without the clip"
        else:
            fix = f"it trains as m{bound}: write m{bound}, or add mmax{magnitude} to train at m{magnitude}"
        raise ValueError(
            f"--aa {aa!r}: m{magnitude}{given} is above timm's magnitude bound {bound}, at which it clips: {fix}"
        )


def _skipped_note(aa: str, kind: str, section: str, sections: list[str]) -> str:
    """What timm trained of ``aa`` (its sections without a digit skipped), so a resume of an old run can pass that
    string; the section timm would have read where it is clear (inc: the recipes' inc1; AugMix's d-1, split by '-')."""
    import re

    if kind == "augmix" and section == "d" and sections[sections.index(section) + 1 :][:1] == ["1"]:
        return (
            ": a negative number cannot be written in --aa (the '-' splits 'd-1' into sections 'd' and '1'), and d-1 "
            "(a random depth of 1-3) is timm's default: leave d out"
        )
    first = aa.split("-")[0]
    kept = [part for part in sections if re.search(r"\d", part) or (kind == "rand" and part.startswith("t"))]
    skipped = len(sections) - len(kept)
    note = f": timm trained {'-'.join([first, *kept])!r} (the section{'s' if skipped > 1 else ''} skipped)"
    if kind == "rand" and section == "inc":
        fixed = "-".join([first, *("inc1" if part == "inc" else part for part in sections)])
        note += f"; did you mean {fixed!r}?"
    return note


def build_transforms(args, img_size: int, mean, std, augment: bool = True):
    """(train transform, val transform) for an ImageFolder run with ``args``' augmentation options."""
    from timm.data import create_transform

    train = create_transform(
        img_size,
        is_training=True,
        no_aug=not augment,
        scale=tuple(args.scale) if args.scale else None,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        interpolation=args.train_interpolation,
        mean=mean,
        std=std,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
    )
    val = create_transform(
        img_size, is_training=False, interpolation=args.interpolation, mean=mean, std=std, crop_pct=args.crop_pct
    )
    for op in _augment_ops(train):
        if op.aug_fn is _timm_posterize():
            op.aug_fn = posterize_any_bits
    return train, val


def _timm_posterize():
    from timm.data import auto_augment

    return auto_augment.posterize


def posterize_any_bits(img, bits_to_keep: int, **kwargs):
    """timm's posterize, with Pillow's answer before Pillow 13 for 0 bits: every band 0 (black for the L and RGB
    images the training command reads; a palette image's entry 0, a transparent RGBA).

    RandAugment's increasing posterize (``inc1``, the recipes' ``rand-m9-mstd0.5-inc1``) keeps 4 - int(0.4 m) bits,
    0 where a magnitude drawn about 9 (std 0.5) clips at 10 (~2% of its draws); Pillow 13 refuses 0 bits
    ("bits must be between or equal to 1 and 8"), which killed a data-loader worker about once in 600 images.
    Pillow up to 12 masked every bit away (i & ~255 = 0): the image the recipes' own runs saw.
    """
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return _timm_posterize()(img, bits_to_keep, **kwargs)


def _augment_ops(transform):
    """timm's AugmentOps inside a transform: Compose's transforms, RandAugment's and AugMix's ops, AutoAugment's
    sub-policies (lists of ops)."""
    from timm.data.auto_augment import AugmentOp

    if isinstance(transform, AugmentOp):
        yield transform
        return
    children = transform if isinstance(transform, (list, tuple)) else ()
    for attribute in ("transforms", "ops", "policy"):
        children = [*children, *(getattr(transform, attribute, None) or ())]
    for child in children:
        yield from _augment_ops(child)


def ignored_on_digits(args) -> list[str]:
    """The augmentation options set away from their defaults, which a digits run does not use."""
    return [
        "--" + name.replace("_", "-")
        for name, default in AUG_OPTIONS.items()
        if getattr(args, name) != default and getattr(args, name) is not None
    ]
