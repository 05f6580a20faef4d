"""masksub_kernels.training.pretrained: the load summary and the checkpoint formats' key rules (helper-177's
mutation audit; each test names the mutant it kills)."""

import torch

from masksub_kernels.training.pretrained import LoadReport, detect_format


def test_pretrained_summary_lists_six_ignored_keys_without_a_zero_more():
    # kills pretrained.py:64 `len(self.ignored) > 6` -> `>= 6` ("... and 0 more")
    six = LoadReport(format="timm", loaded=1, ignored=[f"k{i}" for i in range(6)]).summary("f.pth")
    assert six.endswith("not used: k0, k1, k2, k3, k4, k5"), six
    seven = LoadReport(format="timm", loaded=1, ignored=[f"k{i}" for i in range(7)]).summary("f.pth")
    assert seven.endswith("k5 and 1 more"), seven


def test_pretrained_module_prefix_is_stripped_only_when_every_key_has_it():
    # kills pretrained.py:120 `any(...) and all(...)` -> `any(...) or all(...)` (a state with one 'module.' key had
    # every key cut by 7 characters)
    t = torch.zeros(1)
    assert detect_format({"module.head.weight": t, "blocks.0.weight": t})[1].keys() == {
        "module.head.weight",
        "blocks.0.weight",
    }
    assert detect_format({"module.a": t, "module.b": t})[1].keys() == {"a", "b"}
