"""Shared by the tests of ``masksub-train-mlm`` (test_mlm_cli.py, test_mlm_resume.py): the command's tiny settings,
a tiny corpus and one vocabulary (fixtures, module-scoped: import them by their function names), and the log."""

from __future__ import annotations

import json
import os

import pytest

from masksub_kernels.training import text_data
from masksub_kernels.training.mlm_cli import main

TINY = [
    "--vocab-size",
    "120",
    "--seq-len",
    "16",
    "--layers",
    "1",
    "--width",
    "16",
    "--heads",
    "2",
    "--batch-size",
    "4",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--eval-blocks",
    "8",
    "--warmup-steps",
    "1",
    "--mask-ratio",
    "0.25",
]  # fmt: skip  (16 tokens: r = 0.5 could not keep every target)


@pytest.fixture(scope="module", name="corpus")
def corpus_fixture(tmp_path_factory) -> str:
    """A directory of two text files: 400 stdlib docstrings, one paragraph each."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [d for d in text_data.stdlib_docstrings() if "\n\n" not in d][:400]
    (root / "a.txt").write_text("\n\n".join(docs[:200]), encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("\n\n".join(docs[200:]), encoding="utf-8")
    return str(root)


@pytest.fixture(scope="module", name="tokenizer")
def tokenizer_fixture(corpus, tmp_path_factory) -> str:
    """One vocabulary for the runs that are compared (training one is not deterministic)."""
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    assert main(["--data-dir", corpus, *TINY, "--steps", "1", "--eval-every", "1", "--tokenizer", path,
                 "--output", str(tmp_path_factory.mktemp("first"))]) == 0  # fmt: skip
    return path


def log(output) -> dict:
    """The run's log.json."""
    with open(os.path.join(output, "log.json")) as f:
        return json.load(f)
