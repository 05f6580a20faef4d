"""masksub_kernels.training.extras: a missing optional package is a one-line error naming the pip extra that brings
it, before any work (helper-231: masksub-train without timm or scikit-learn, masksub-train-mlm without transformers
or tokenizers ended in ModuleNotFoundError tracebacks; MaskSubTrainer without accelerate in transformers' "Could not
import module 'Trainer'")."""

import subprocess
import sys
import types

import pytest

from masksub_kernels.training import extras


def test_the_message_names_what_is_missing_and_its_extra(monkeypatch):
    assert extras.missing_message("x", ("torch", "sys"), "train") is None
    message = extras.missing_message("the thing", ("torch", "no_such_module_masksub", "sklearn"), "train")
    assert message.startswith("the thing needs no_such_module_masksub, ")  # sklearn installed here: not named
    # helper-270: named 'masksub_kernels[train]', which no index serves: the package installs from its checkout
    assert (
        "pip install --no-build-isolation '.[train]' in the masksub_kernels checkout (or pip install "
        "no_such_module_masksub)" in message
    )
    monkeypatch.setitem(sys.modules, "sklearn", None)  # an entry of None: importing it fails
    assert "needs scikit-learn," in extras.missing_message("y", ("sklearn",), "train")  # pip's name, not the import's
    # an imported stand-in without __spec__ (find_spec raises ValueError) is installed (helper-234: called missing)
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    assert extras.missing_message("y", ("sklearn",), "train") is None


@pytest.mark.parametrize(
    ("command", "absent", "message"),
    [
        ("train", "timm", "masksub-train: error: the image training command needs timm, not installed: pip install "
         "--no-build-isolation '.[train]'"),
        ("train", "sklearn", "masksub-train: error: the digits data set (no --data-dir) needs scikit-learn"),
        ("mlm", "tokenizers", "masksub-train-mlm: error: the masked-LM command needs tokenizers, not installed: pip "
         "install --no-build-isolation '.[text]'"),
    ],
)  # fmt: skip
def test_the_commands_refuse_to_start_without_their_packages(tmp_path, capsys, monkeypatch, command, absent, message):
    from masksub_kernels.training import cli, mlm_cli

    monkeypatch.setattr(extras, "_installed", lambda name: name != absent)
    main = cli.main if command == "train" else mlm_cli.main
    assert main(["--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing made before the check


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] == 'accelerate':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from masksub_kernels.training.hf_trainer import MaskSubTrainer
"""


def test_the_trainer_without_accelerate_says_so():
    pytest.importorskip("transformers")
    run = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert (
        "ImportError: MaskSubTrainer needs accelerate, not installed: pip install --no-build-isolation '.[text]'"
        in (run.stderr)
    )
