"""training/augment.py: the command's options reach the transforms (helper-171's mutation audit); --aa is checked."""

import pytest

from masksub_kernels.train import build_parser
from masksub_kernels.training.augment import build_transforms
from masksub_kernels.training.run_setup import UsageError, check_args


def test_scale_reaches_the_random_resized_crop():
    args = build_parser().parse_args(["--scale", "0.3", "0.6"])
    train, _ = build_transforms(args, 32, (0.5,) * 3, (0.5,) * 3)
    assert tuple(train.transforms[0].scale) == (0.3, 0.6)


@pytest.mark.parametrize(
    ("aa", "message"),
    [
        ("rand-m9-mstd0.5-inc", "section 'inc' has no number (timm skips it)"),  # the recipes' inc1, the 1 lost
        ("rand-zz", "section 'zz' has no number"),  # timm: RandAugment at magnitude 10
        ("rand-m9-mstd0.5-xyz", "section 'xyz' has no number"),
        ("rand--m9", "section '' has no number"),
        ("rand-m9-tfoo", "section 'tfoo' names no transform set"),  # timm: the default set
        ("rand-m9-m8", "section 'm8' is repeated"),
        ("rand-m9.5", "section 'm9.5' is not m<int>"),
        ("rand-p2", "section 'p2' is not a probability in [0, 1]"),
        ("augmix-m5-q2", "section 'q2' is not one of augmix's"),
        ("v0-foo", "section 'foo' has no number"),
        ("bogus", "'bogus' is not rand, augmix or a policy"),
    ],
)
def test_aa_sections_that_timm_would_skip_or_misread_are_refused(aa, message):
    # helper-296's probe: timm skips a rand-... section without a digit, so a lost digit trained another augmentation
    args = build_parser().parse_args(["--aa", aa])
    with pytest.raises(UsageError) as info:
        check_args(args)
    assert (
        str(info.value).startswith(f"--aa {aa!r}: ") and message in str(info.value) and "accepted: " in str(info.value)
    )


@pytest.mark.parametrize(
    ("aa", "note"),
    [
        ("rand-m9-mstd0.5-inc", "timm trained 'rand-m9-mstd0.5' (the section skipped); did you mean "
         "'rand-m9-mstd0.5-inc1'?; accepted: "),
        ("rand-zz-m9-yy", "timm trained 'rand-m9' (the sections skipped); accepted: "),
        ("v0-foo", "timm trained 'v0' (the section skipped); accepted: "),
        ("augmix-m5-d-1", "a negative number cannot be written in --aa (the '-' splits 'd-1' into sections 'd' and "
         "'1'), and d-1 (a random depth of 1-3) is timm's default: leave d out; accepted: "),
    ],
)  # fmt: skip
def test_a_skipped_aa_section_names_what_timm_trained(aa, note):
    # a resume of a run whose --aa lost a digit can pass the string timm actually trained
    args = build_parser().parse_args(["--aa", aa])
    with pytest.raises(UsageError, match="has no number") as info:
        check_args(args)
    assert note in str(info.value)


@pytest.mark.parametrize(
    "aa", ["rand", "rand-m9-mstd0.5-inc1", "rand-m7-mstd0.5", "rand-tweights-n3-p0.7-mmax12-inc0", "rand-m9-t3a",
           "rand-m15-mmax15", "rand-m10-inc0", "rand-m9-mstd101", "rand-n2-m10", "augmix-m10", "3a", "v0",
           "original-mstd0.5", "augmix-m5-w4-d2-b1-a0.5-mstd0.2"],
)  # fmt: skip
def test_aa_forms_timm_reads_are_accepted(aa):
    args = build_parser().parse_args(["--aa", aa])
    check_args(args)
    build_transforms(args, 32, (0.5,) * 3, (0.5,) * 3)


# kills aa3: check_aa `not 0 <= number <= 1` -> `not 0 <= number < 1` (rand-p1, timm's always-apply, refused);
# aa6: `value in kind_of` -> `value in kind_of or not value` (a bare `t`, timm's default set, accepted);
# aa7: augmix's sections plus `n` (RandAugment's, which timm's augmix parser ignores: accepted);
# aa4: `not math.isfinite(number) or` dropped (augmix-a1e999, an infinite Dirichlet alpha, accepted)
@pytest.mark.parametrize(
    ("aa", "message"),
    [
        ("rand-t", "section 't' names no transform set"),
        ("augmix-n3", "section 'n3' is not one of augmix's"),
        ("augmix-a1e999", "section 'a1e999' is not a<float>"),
        ("rand-m9-mstd0.5-inc2", "section 'inc2' is not inc0 or inc1 (timm reads any other number as inc1)"),
        ("rand-m9-mmax0", "section 'mmax0' reads as mmax10"),
        (
            "rand-m15",
            "m15 is above timm's magnitude bound 10, at which it clips: it trains as m10: write m10, or add mmax15",
        ),
        (
            "rand-m15-mstd101",
            "m15 is above timm's magnitude bound 10, at which it clips: each magnitude drawn above 10 is "
            "clipped to it; add mmax15 to draw without the clip",
        ),
        ("rand-m13-mmax12", "m13 is above timm's magnitude bound 12"),
        ("rand-mmax5", "m10 (timm's default) is above timm's magnitude bound 5"),
        (
            "augmix-m15-w4",
            "m15 is above timm's magnitude bound 10, at which it clips: write m10 or less (AugMix has no mmax)",
        ),
        (None, None),
    ],
)
def test_aa_edges_of_the_sections(aa, message):
    from masksub_kernels.training.augment import check_aa

    if aa is None:  # a probability of 1 (and 0) is one
        check_aa("rand-m9-p1")
        check_aa("rand-m9-p0.0")
        return
    with pytest.raises(ValueError) as info:
        check_aa(aa)
    assert message in str(info.value), str(info.value)


def test_an_infinite_mstd_is_refused_with_timms_finite_spelling_of_uniform_sampling():
    from masksub_kernels.training.augment import check_aa

    with pytest.raises(ValueError, match=r"section 'mstd1e999' is not finite: write mstd101 \(timm samples"):
        check_aa("rand-m9-mstd1e999")
    check_aa("rand-m9-mstd101")  # the finite spelling timm reads as uniform
