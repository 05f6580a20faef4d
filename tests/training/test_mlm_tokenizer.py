"""masksub_kernels.training.mlm_tokenizer: the vocabulary's digest, notes and refusals, the directories a refused
run made for it (helper-233's mutation audit: each test names the mutant or bug it kills)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from masksub_kernels.training import text_data
from masksub_kernels.training.run_setup import UsageError

pytest.importorskip("tokenizers")


def _pretrained(tmp_path):
    path = tmp_path / "tok.json"
    text_data.train_tokenizer(["some words to learn, some words."] * 4, 80).save(str(path))
    return path


# kills mlm_tokenizer.py:72 the vocabulary's digest over the file's first 4 KB only (or over its path), and
# load_tokenizer returning another digest than its file's: a resume with a file that differs anywhere is another
# vocabulary; the same bytes elsewhere are the same one
def test_the_vocabulary_digest_reads_the_whole_file(tmp_path):
    import hashlib

    from masksub_kernels.training.mlm_tokenizer import load_tokenizer, tokenizer_digest

    path = _pretrained(tmp_path)
    data = path.read_bytes() + b" " * 8192  # (JSON allows trailing spaces)
    path.write_bytes(data)
    (tmp_path / "copy.json").write_bytes(data)
    (tmp_path / "tail.json").write_bytes(data + b"\n")  # differs after 8 KB of the same bytes
    assert tokenizer_digest(str(path)) == tokenizer_digest(str(tmp_path / "copy.json"))
    assert tokenizer_digest(str(path)) != tokenizer_digest(str(tmp_path / "tail.json"))
    args = SimpleNamespace(tokenizer=str(path), vocab_size=None)
    _, digest, _ = load_tokenizer(args, str(tmp_path / "tail.json"), [], 0, 1, False, "prog")
    assert digest == hashlib.sha256(data + b"\n").hexdigest()


# kills mlm_tokenizer.py:114 the --vocab-size note printed on every rank (`rank == 0 and` left out) and :103 the
# earlier-run note printed for an explicit --tokenizer (`not args.tokenizer` left out): under torchrun every process
# repeated it; a file the user named is not "an earlier run's"
def test_the_vocabulary_notes_come_from_rank_0_and_only_where_they_apply(tmp_path, capsys):
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer

    path = str(_pretrained(tmp_path))
    args = SimpleNamespace(tokenizer=None, vocab_size=200)
    load_tokenizer(args, path, [], 1, 1, False, "prog")  # rank 1 (world 1: no collective here)
    assert capsys.readouterr().err == ""
    load_tokenizer(args, path, [], 0, 1, False, "prog")
    err = capsys.readouterr().err
    assert "that an earlier run wrote there" in err and "--vocab-size 200 is not used" in err
    args = SimpleNamespace(tokenizer=path, vocab_size=None)
    load_tokenizer(args, path, [], 0, 1, False, "prog")
    assert capsys.readouterr().err == ""


class _FailingSave:
    def save(self, path):
        open(path, "w").close()  # a part written
        raise OSError(28, "No space left on device")


# kills mlm_tokenizer.py:126 `while not os.path.exists(parent)` -> `if` (only the innermost directory made for a
# refused run's vocabulary removed, its parents left behind), the removal of the part written, and the save straight
# to the path (not PATH.partial then os.replace): a save that fails leaves no file at the path, which the next run
# would read as a whole vocabulary
def test_a_refused_vocabulary_leaves_none_of_the_directories_made_for_it(tmp_path, monkeypatch):
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer, removed_if_refused

    monkeypatch.setattr(text_data, "train_tokenizer", lambda *a: _FailingSave())
    path = str(tmp_path / "a" / "b" / "c" / "tok.json")
    args = SimpleNamespace(tokenizer=path, vocab_size=80)
    with pytest.raises(UsageError, match=r"cannot be saved: .*No space left"):
        with removed_if_refused(path, 0):
            load_tokenizer(args, path, ["words"], 0, 1, False, "prog")
    assert os.listdir(tmp_path) == []
    # an existing directory is kept, even emptied
    (tmp_path / "kept").mkdir()
    path = str(tmp_path / "kept" / "new" / "tok.json")
    with pytest.raises(UsageError):
        with removed_if_refused(path, 0):
            load_tokenizer(SimpleNamespace(tokenizer=path, vocab_size=80), path, ["w"], 0, 1, False, "prog")
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []
    # load_tokenizer alone (no removed_if_refused around it): no whole-looking file, no part left
    path = str(tmp_path / "kept" / "tok.json")
    with pytest.raises(UsageError, match="cannot be saved"):
        load_tokenizer(SimpleNamespace(tokenizer=path, vocab_size=80), path, ["w"], 0, 1, False, "prog")
    assert os.listdir(tmp_path / "kept") == []


def _edited(tmp_path, edit) -> str:
    """A trained vocabulary's JSON, changed by ``edit(spec)``, written to a file: its path."""
    spec = json.loads(text_data.train_tokenizer(["some words to learn, some words."] * 4, 80).to_str())
    edit(spec)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(spec))
    return str(path)


# helper-233's bugs: load_tokenizer took a file whose ids have a gap (the model's embedding has get_vocab_size()
# rows: an IndexError at the first step, a device assert on a GPU) and one whose BERT tokens are not special added
# tokens (pack_blocks encodes only special ones as text: a corpus's own "[MASK]" was packed as the mask id)
def test_a_vocabulary_with_an_id_gap_or_plain_bert_tokens_is_refused(tmp_path):
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer

    def gap(spec):
        vocab = spec["model"]["vocab"]
        vocab[max(vocab, key=vocab.get)] = 1000

    def plain(spec):
        for token in spec["added_tokens"]:
            token["special"] = token["content"] != "[MASK]"

    args = SimpleNamespace(tokenizer="given", vocab_size=None)
    with pytest.raises(UsageError, match=r"its ids run to 1000 but it has \d+ tokens .* without gaps"):
        load_tokenizer(args, _edited(tmp_path, gap), [], 0, 1, False, "prog")
    with pytest.raises(UsageError, match=r"BERT's tokens \['\[MASK\]'\] are not special added tokens there"):
        load_tokenizer(args, _edited(tmp_path, plain), [], 0, 1, False, "prog")
    load_tokenizer(args, _edited(tmp_path, lambda spec: None), [], 0, 1, False, "prog")  # as trained: taken


# kills removed_if_refused deciding from the file's absence at its entry (helper-269): a vocabulary that another run (a
# concurrent --prepare-only) wrote after a run's entry, read by the run, then refused, was deleted with the cache it
# built; and its record of the file it saved not checked against the file now at the path (another run's, which
# replaced it, deleted)
def test_a_refused_run_deletes_only_the_vocabulary_it_saved_itself(tmp_path):
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer, removed_if_refused

    path = tmp_path / "out" / "tokenizer.json"
    args = SimpleNamespace(tokenizer=str(path), vocab_size=80)
    words = ["some words to learn, some words."] * 4
    cache = tmp_path / "cache.bin"
    with pytest.raises(UsageError, match="refused"):
        with removed_if_refused(str(path), 0, also=[str(cache)]):
            path.parent.mkdir()
            text_data.train_tokenizer(words, 80).save(str(path))  # another run's, after this one's entry
            _, _, trained = load_tokenizer(args, str(path), words, 0, 1, False, "prog")
            cache.write_bytes(b"blocks built for that vocabulary")
            raise UsageError("refused")
    assert not trained and path.is_file() and cache.is_file()
    path.unlink()
    path.parent.rmdir()
    with pytest.raises(UsageError, match="refused"):  # one this run saved: deleted, with its cache and folder
        with removed_if_refused(str(path), 0, also=[str(cache)]):
            _, _, trained = load_tokenizer(args, str(path), words, 0, 1, False, "prog")
            raise UsageError("refused")
    assert trained and not cache.exists() and not path.parent.exists()
    with pytest.raises(UsageError, match="refused"):  # saved by this run, then replaced by another run's: kept
        with removed_if_refused(str(path), 0, also=[str(cache)]):
            _, _, trained = load_tokenizer(args, str(path), words, 0, 1, False, "prog")
            other = path.with_name("other.json")
            text_data.train_tokenizer(words, 80).save(str(other))
            os.replace(other, path)
            cache.write_bytes(b"blocks")
            raise UsageError("refused")
    assert trained and path.is_file() and cache.is_file()


# kills mlm_tokenizer.py's one temporary name per path (helper-273: two runs saving into one path wrote one .partial
# file together and renamed each other's half-written bytes into place): another run's file being written at
# PATH.partial is not this run's temporary file
def test_a_save_does_not_touch_another_runs_partial_file(tmp_path):
    from masksub_kernels.training.mlm_tokenizer import load_tokenizer

    path = tmp_path / "tok.json"
    other = tmp_path / "tok.json.partial"
    other.write_text("another run's save, under way")
    args = SimpleNamespace(tokenizer=None, vocab_size=80)
    load_tokenizer(args, str(path), ["some words to learn, some words."] * 4, 0, 1, False, "prog")
    assert other.read_text() == "another run's save, under way"
    assert json.loads(path.read_text())["model"]["type"] == "WordPiece"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "tok.json.partial"]  # no temporary left
