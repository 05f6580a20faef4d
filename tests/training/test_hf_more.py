"""Gaps found by helper-119's mutation sweep of the pretrained-weight loader (training/pretrained.py), the training
command's checkpoints (checkpoint.py), the MLM text pipeline (text_data.py) and its vocabulary (mlm_tokenizer.py):
each test fails on a mutant that the other tests let pass."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from _models import tiny_resnet, tiny_swin, tiny_vit

from masksub_kernels.training import MaskSub
from masksub_kernels.training.pretrained import load_initial_checkpoint
from masksub_kernels.training.run_setup import UsageError


def _saved(tmp_path, name: str, obj) -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def _assert_loaded(model: torch.nn.Module, state: dict) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_initial_checkpoints_in_their_wrappers_and_prefixes(tmp_path):
    # a DDP-saved state dict (module.*), {'state_dict': ...} (timm's training script), a whole pickled module, a
    # masksub-train checkpoint of a --compile run from before its names were made eager (model._orig_mod.*), a
    # .safetensors file: each loads every tensor (two fresh models differ: each draws its own initialisation)
    from safetensors.torch import save_file

    source = tiny_vit()
    state = source.state_dict()
    files = {
        "ddp.pth": {f"module.{key}": value for key, value in state.items()},
        "timm.pth": {"state_dict": state, "epoch": 3},
        "whole.pth": source,
        "compiled.pth": {"module": {f"model._orig_mod.{key}": value for key, value in state.items()}, "num_updates": 2},
        # MAE's pre-training checkpoint: its decoder and its mask token are not the encoder's
        "mae.pth": {"model": {**state, "mask_token": torch.zeros(1, 1, 8), "decoder_embed.weight": torch.zeros(8, 32)}},
    }
    paths = [_saved(tmp_path, name, obj) for name, obj in files.items()]
    save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / "w.safetensors"))
    for path in [*paths, str(tmp_path / "w.safetensors")]:
        model = tiny_vit()
        assert not torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
        report = load_initial_checkpoint(model, path)
        assert report.loaded == len(state) and report.reinitialised == [] and report.ignored == [], path
        assert report.format == ("mae" if path.endswith("mae.pth") else "masksub" if "compiled" in path else "timm")
        _assert_loaded(model, state)
    # the file's final norm where the model has none and pools without fc_norm: refused, not silently dropped
    model = tiny_vit()
    model.norm = torch.nn.Identity()
    with pytest.raises(UsageError, match=r"unexpected norm\.weight; unexpected norm\.bias"):
        load_initial_checkpoint(model, paths[0])


def test_a_swin_runs_checkpoint_drops_the_mask_token_and_a_resnets_classifier_is_fc(tmp_path):
    # masksub-train's Swin checkpoint holds MaskSub's own mask_token beside model.*: not a weight of the model
    ms = MaskSub(tiny_swin())
    path = _saved(tmp_path, "swin.pth", {"module": ms.state_dict(), "num_updates": 1})
    model = tiny_swin()
    report = load_initial_checkpoint(model, path)
    assert report.format == "masksub" and report.reinitialised == []
    _assert_loaded(model, ms.model.state_dict())
    # a ResNet's classifier is 'fc' (its pretrained_cfg): another number of classes is re-initialised, not refused
    source = tiny_resnet()
    source.reset_classifier(5)
    model = tiny_resnet()
    fc = model.fc.weight.detach().clone()
    report = load_initial_checkpoint(model, _saved(tmp_path, "resnet.pth", source.state_dict()), head_init_scale=0.5)
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    assert report.ignored == ["fc.weight (5, 512)", "fc.bias (5,)"]
    torch.testing.assert_close(model.fc.weight, fc * 0.5, rtol=0, atol=0)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)


class _Unsaveable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_a_failed_checkpoint_save_leaves_the_last_one_whole(tmp_path):
    # save_checkpoint writes a temporary file and renames it: a save that fails midway (here an unpicklable
    # object; in a run, a full disk or a kill) leaves the previous checkpoint loadable, and it makes the directory
    from masksub_kernels.training.checkpoint import load_checkpoint, save_checkpoint

    path = str(tmp_path / "new" / "dir" / "last.pth")
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(4)})
    with pytest.raises(RuntimeError, match="cannot be saved"):
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(4), "bad": _Unsaveable()})
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(4))


class _Words:
    """A stand-in tokenizer: the special tokens at 0..4, every other word its own integer id."""

    def token_to_id(self, token):
        return {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}.get(token)

    def encode_batch(self, documents, add_special_tokens):
        assert add_special_tokens is False
        return [type("Encoding", (), {"ids": [int(word) for word in doc.split()]}) for doc in documents]


def test_blocks_special_tokens_and_the_held_out_split():
    import zlib

    from masksub_kernels.training import text_data

    # the documents joined by [SEP], cut into [CLS] + 3 tokens + [SEP]; the tail shorter than a block dropped
    blocks = text_data.pack_blocks(_Words(), ["10 11 12", "13 14", "15", "16"], 5)  # "16 [SEP]" dropped
    assert blocks.tolist() == [[2, 10, 11, 12, 3], [2, 3, 13, 14, 3], [2, 3, 15, 3, 3]]
    with pytest.raises(ValueError, match="must be >= 3"):
        text_data.pack_blocks(_Words(), ["10 11 12"], 2)
    mask = text_data.special_tokens_mask(torch.tensor([[2, 5, 4, 1, 3, 0]]), _Words())
    assert mask.tolist() == [[True, False, False, False, True, True]]  # [CLS], [SEP], [PAD]: not [MASK] / [UNK]
    documents = [f"document number {i}" for i in range(200)]
    train, held_out = text_data.split_documents(documents)
    assert held_out == [doc for doc in documents if zlib.crc32(doc.encode("utf-8")) % 10 == 0]
    assert train == [doc for doc in documents if doc not in held_out]


def test_the_corpus_files_and_the_tokenizer(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    from masksub_kernels.training import text_data

    (tmp_path / "a.txt").write_bytes("\ufeffFirst paragraph.\n\n   \n\nSecond one.".encode())  # a byte-order mark
    (tmp_path / "notes.md").write_text("not a text file of the corpus")
    assert text_data.text_dir_documents(str(tmp_path)) == ["First paragraph.", "Second one."]
    # helper-151: a line of spaces separates paragraphs; .TXT files and linked folders are read (a loop once); an
    # unreadable file is a ValueError naming it (the command's usage error), not a traceback
    corpus = tmp_path / "corpus"
    (corpus / "store").mkdir(parents=True)
    (corpus / "B.TXT").write_text("one\n  \t\ntwo")
    (corpus / "store" / "c.txt").write_text("three")
    (corpus / "linked").symlink_to(corpus / "store")
    (corpus / "store" / "up").symlink_to(corpus)  # a loop
    assert text_data.text_dir_documents(str(corpus)) == ["one", "two", "three"]
    (corpus / "broken.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(ValueError, match=r"broken.txt cannot be read: No such file or directory"):
        text_data.text_dir_documents(str(corpus))
    (corpus / "broken.txt").unlink()
    real_scandir = os.scandir

    def refused(path):  # (root may read any folder: a listing refused as for another user)
        if str(path).endswith("store"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    with mock.patch("os.scandir", refused), pytest.raises(ValueError, match=r"store cannot be read: Permission"):
        text_data.text_dir_documents(str(corpus))
    library = tmp_path / "lib"
    (library / "tests").mkdir(parents=True)
    (library / "mod.py").write_text('"""The module."""\n\ndef f():\n    """The function."""\n')
    (library / "tests" / "test_mod.py").write_text('"""A test suite."""\n')
    assert text_data.stdlib_docstrings(str(library)) == ["The module.", "The function."]
    tokenizer = text_data.train_tokenizer(["Hello world, hello again."] * 4, 80)
    assert tokenizer.encode("HELLO World").tokens == tokenizer.encode("hello world").tokens  # lower-cased
    # a word of more than 100 characters encodes as [UNK] and cost the trainer quadratic time: left out (helper-151)
    long = "q" * 101 + "z" * 100000
    quick = text_data.train_tokenizer(["Hello world, hello again.", long, "x" * 100 + " y"] * 4, 80)
    assert "z" not in quick.get_vocab() and "x" in quick.get_vocab()  # (100 characters: a word WordPiece takes)
    assert quick.encode(long).tokens == ["[UNK]"]
    # CJK ideographs are words of one character, and punctuation ends a word, however long the run (helper-153)
    cjk, dashed = "".join(chr(0x4E00 + i % 32) for i in range(160)), "—".join(["thing"] * 40)
    kept = text_data.train_tokenizer([cjk, dashed] * 4, 120).get_vocab()
    assert all(chr(0x4E00 + i) in kept for i in range(32)) and "thing" in kept
    with pytest.raises(SystemExit):
        text_data.main([str(tmp_path / "tok.json"), "--vocab-size", "10", "--data-dir", str(tmp_path)])
    assert "--vocab-size must be >= 64" in capsys.readouterr().err


def test_which_vocabulary_a_run_reads_trains_and_keeps(tmp_path):
    # mlm_tokenizer.py, called directly: a resume whose recorded file is gone reads the one beside its checkpoint,
    # an older checkpoint's (in its args) is read; an existing file is never trained over, nor deleted when the
    # run is refused; a file without BERT's special tokens is refused
    from types import SimpleNamespace

    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from masksub_kernels.training import text_data
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer, removed_if_refused, tokenizer_path

    run, shared = tmp_path / "moved_run", tmp_path / "shared.json"
    run.mkdir()
    text_data.train_tokenizer(["some words to learn, some words."] * 4, 80).save(str(shared))
    (run / "tokenizer.json").write_bytes(shared.read_bytes())
    args = SimpleNamespace(tokenizer=None, resume=str(run / "last.pth"), output=None, vocab_size=80)
    assert tokenizer_path(args, {"tokenizer": str(tmp_path / "gone" / "tokenizer.json")}) == str(run / "tokenizer.json")
    assert tokenizer_path(args, {"args": {"tokenizer": str(shared)}}) == str(shared)
    before = shared.read_bytes()
    args.tokenizer = str(shared)
    tokenizer, _, trained = load_tokenizer(args, str(shared), ["other text entirely"] * 4, 0, 1, False, "prog")
    assert not trained and shared.read_bytes() == before and tokenizer.token_to_id("[MASK]") == 4
    with pytest.raises(UsageError, match="refused"):
        with removed_if_refused(str(shared), 0):
            raise UsageError("refused")
    assert shared.read_bytes() == before
    Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "plain.json"))
    with pytest.raises(
        UsageError, match=r"lacks BERT's special tokens \['\[PAD\]', '\[CLS\]', '\[SEP\]', '\[MASK\]'\]"
    ):
        load_tokenizer(args, str(tmp_path / "plain.json"), [], 0, 1, False, "prog")


def test_only_rank_0_trains_a_missing_vocabulary(tmp_path, capsys):
    from types import SimpleNamespace

    pytest.importorskip("tokenizers")
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer

    path = tmp_path / "tokenizer.json"
    args = SimpleNamespace(tokenizer=None, vocab_size=80)
    docs = ["some words to learn, some words."] * 4
    # rank 1 (world 1: no barrier here) reads what rank 0 wrote; with nothing written, a clear error, no training
    with pytest.raises(UsageError, match="is not a tokenizers JSON file"):
        load_tokenizer(args, str(path), docs, 1, 1, False, "prog")
    assert not path.exists()
    tokenizer, _, trained = load_tokenizer(args, str(path), docs, 0, 1, False, "prog")
    assert trained and path.exists() and tokenizer.token_to_id("[MASK]") == 4
    assert tokenizer.get_vocab_size() < 80  # all this text has: --vocab-size was used, no note says otherwise
    assert "is not used" not in capsys.readouterr().err


def test_a_vocabulary_rank_0_cannot_save_ends_every_rank(tmp_path, monkeypatch):
    # under DDP rank 0 trains and saves; where the save fails, its message reaches the other ranks through
    # rank_zero_check's broadcast (before: rank 0 raised before the barrier, the others waited there: a hang or
    # gloo / NCCL tracebacks, helper-193), and they read no file
    from types import SimpleNamespace

    import torch.distributed as dist

    pytest.importorskip("tokenizers")
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer
    from masksub_kernels.training.rank_zero import ReportedOnRankZero

    (tmp_path / "a_file").write_text("")
    path = str(tmp_path / "a_file" / "tokenizer.json")  # its directory is a file: the save fails
    args = SimpleNamespace(tokenizer=None, vocab_size=80)
    docs = ["some words to learn, some words."] * 4
    sent = []
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: sent.append(list(objects)))
    monkeypatch.setattr(dist, "barrier", lambda: pytest.fail("a barrier rank 0 may never reach"), raising=False)
    with pytest.raises(UsageError, match="cannot be saved"):
        load_tokenizer(args, path, docs, 0, 2, False, "prog")
    assert len(sent) == 1 and "cannot be saved" in sent[0][0]
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: objects.__setitem__(0, sent[0][0]))
    with pytest.raises(ReportedOnRankZero, match="cannot be saved"):
        load_tokenizer(args, path, docs, 1, 2, False, "prog")


def test_every_image_classifier_transformers_maps_is_one_masksub_recognises():
    # hf_hooks.is_transformers_classifier reads the class name ("ForImageClassification"): transformers' own list of
    # image classifiers (AutoModelForImageClassification's) must all match it, or a new release's classifier named
    # otherwise would be refused by check_hf_head as a model without a head
    transformers = pytest.importorskip("transformers")
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as names

    from masksub_kernels.training.hf_hooks import is_transformers_classifier

    names = [name for found in names.values() for name in ((found,) if isinstance(found, str) else found)]
    classes = [getattr(transformers, name) for name in names if hasattr(transformers, name)]  # (exported ones)
    assert len(classes) > 30  # (46 in transformers 5.24)
    for cls in classes:
        model = cls.__new__(cls)  # no weights or config: only the class is read
        assert is_transformers_classifier(model), cls.__name__
