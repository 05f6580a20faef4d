"""training/text_data.py's documented rules: the held-out split, packing, the special-tokens mask, documents
(helper-169's and helper-233's mutation audits: each test fails on a mutant the command's tests let pass)."""

from __future__ import annotations

import os
import zlib

import pytest
import torch

from masksub_kernels.training import text_data


def test_the_held_out_documents_are_those_whose_crc32_is_0_mod_10():
    docs = [f"document number {i}" for i in range(200)]
    train, held_out = text_data.split_documents(docs)
    assert held_out and all(zlib.crc32(d.encode("utf-8")) % 10 == 0 for d in held_out)
    assert all(zlib.crc32(d.encode("utf-8")) % 10 != 0 for d in train)


def test_pack_blocks_refuses_a_length_under_3_with_its_message():
    with pytest.raises(ValueError, match="must be >= 3"):
        text_data.pack_blocks(None, ["a b c"], 2)  # (checked before the tokenizer is used)


def test_special_tokens_mask_marks_padding_too():
    class Stub:  # the tokenizer's ids: [PAD] 0, [CLS] 2, [SEP] 3
        def token_to_id(self, token):
            return {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}[token]

    blocks = torch.tensor([[2, 7, 8, 3, 0, 0]])
    assert text_data.special_tokens_mask(blocks, Stub()).tolist() == [[True, False, False, True, True, True]]


def test_blank_paragraphs_are_not_documents(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  \n\ntwo\n\n", encoding="utf-8")
    assert text_data.text_dir_documents(str(tmp_path)) == ["one", "two"]
    # a line of other whitespace (a no-break space, a form feed, CR LF endings) ends a paragraph too (helper-233: a
    # no-break space's line joined the two); a line break alone does not
    (tmp_path / "a.txt").write_text("one\n\u00a0\ntwo\r\n\x0c\r\nthree\nfour\n", encoding="utf-8", newline="")
    assert text_data.text_dir_documents(str(tmp_path)) == ["one", "two", "three\nfour"]


# kills text_data.py:114 `BertWordPieceTokenizer(lowercase=True)` -> `lowercase=False` (the docstring's lower-casing
# tokenizer: "The" and "the" then two words, each rarer) and text_data.py:118 `min_frequency=2` -> 1 (a word seen
# once took a vocabulary entry)
def test_the_vocabulary_is_lower_cased_and_skips_words_seen_once():
    pytest.importorskip("tokenizers")
    docs = ["The cat sat on the mat. the cat sat on The mat."] * 3 + ["zqxjkvbw"]
    tok = text_data.train_tokenizer(docs, 200)
    assert tok.encode("The CAT").ids == tok.encode("the cat").ids
    assert "the" in tok.get_vocab() and "The" not in tok.get_vocab()
    assert "zqxjkvbw" not in tok.get_vocab()


class _Words:
    """A stand-in tokenizer: the special tokens at 0..4, every other word its own integer id."""

    def token_to_id(self, token):
        return {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}.get(token)

    def encode_batch(self, documents, add_special_tokens):
        return [type("Encoding", (), {"ids": [int(word) for word in doc.split()]}) for doc in documents]


class _Listing:
    """os.scandir's iterator, its entries in reverse order (a filesystem lists in any order)."""

    def __init__(self, entries):
        self.entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def _reversed_listings(monkeypatch):
    real = os.scandir

    def reversed_scandir(path="."):
        with real(path) as it:
            return _Listing(sorted(it, key=lambda e: e.name, reverse=True))

    monkeypatch.setattr(os, "scandir", reversed_scandir)


# kills text_data.py:74 `subdirs.sort()` left out and text_data.py:75 `sorted(files)` -> `files`: the documents' order
# (hence the packed blocks, the data order of every step, a resume's corpus digest) followed the filesystem's listing
def test_the_text_files_are_read_in_sorted_order_whatever_the_listing(tmp_path, monkeypatch):
    for name, text in (("b.txt", "B"), ("a.txt", "A"), ("d2/x.txt", "X"), ("d1/y.txt", "Y"), ("d1/e/z.txt", "Z")):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_text(text)
    _reversed_listings(monkeypatch)
    assert text_data.text_dir_documents(str(tmp_path)) == ["A", "B", "Y", "Z", "X"]


# kills text_data.py:36 `sorted(d for d in subdirs ...)` -> unsorted and text_data.py:37 `sorted(files)` -> `files`:
# the default corpus's order followed the filesystem's listing ("same Python version, same corpus" in order too)
def test_the_stdlib_corpus_is_read_in_sorted_order_whatever_the_listing(tmp_path, monkeypatch):
    for name, doc in (("b.py", "B."), ("a.py", "A."), ("pkg2/m.py", "M."), ("pkg1/n.py", "N.")):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_text(f'"""{doc}"""\n')
    _reversed_listings(monkeypatch)
    assert text_data.stdlib_docstrings(str(tmp_path)) == ["A.", "B.", "N.", "M."]


# kills text_data.py:46 ast.AsyncFunctionDef / ast.ClassDef left out (their docstrings missing from the corpus);
# also pins that a library file in another encoding is skipped (UnicodeDecodeError is a ValueError: leaving it out of
# the except tuple is an equivalent mutant)
def test_the_stdlib_corpus_skips_undecodable_files_and_reads_every_kind_of_docstring(tmp_path):
    (tmp_path / "latin.py").write_bytes(b'"""Caf\xe9."""\n')  # Latin-1: not UTF-8
    (tmp_path / "mod.py").write_text(
        '"""Module."""\n\nclass C:\n    """Class."""\n\nasync def f():\n    """Coroutine."""\n\ndef g():\n    "  "\n'
    )
    # ast.walk order: the module, then its body (class, coroutine); a blank docstring is no document
    assert text_data.stdlib_docstrings(str(tmp_path)) == ["Module.", "Class.", "Coroutine."]


# kills text_data.py:127 `length < 3` -> `length <= 3`: L = 3 is the shortest block the docstring allows ([CLS], one
# token, [SEP]); and checks that a document exactly one block long fills it, its [SEP] the next block's token
def test_the_shortest_blocks_and_a_document_of_exactly_one_block():
    assert text_data.pack_blocks(_Words(), ["10 11"], 3).tolist() == [[2, 10, 3], [2, 11, 3], [2, 3, 3]]
    # 3 tokens + its [SEP] = L - 2: one block, nothing dropped
    assert text_data.pack_blocks(_Words(), ["10 11 12"], 6).tolist() == [[2, 10, 11, 12, 3, 3]]
    with pytest.raises(ValueError, match="the corpus has 3 tokens: too few for one block of 6"):
        text_data.pack_blocks(_Words(), ["10 11"], 6)


# kills text_data.py:148 `inner.enable_truncation(**truncation)` and :150 `inner.enable_padding(**padding)` left out:
# pack_blocks turns a tokenizer's truncation and padding off for its own encoding; the caller's tokenizer must come
# back as it was (it encodes other text later: a library user's, a notebook's)
def test_pack_blocks_gives_the_tokenizer_back_with_its_truncation_and_padding():
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer

    docs = ["the quick brown fox jumps over the lazy dog"] * 4
    tokenizer = Tokenizer.from_str(text_data.train_tokenizer(docs, 80).to_str())
    tokenizer.enable_truncation(max_length=4)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=6)
    truncation, padding = tokenizer.truncation, tokenizer.padding
    text_data.pack_blocks(tokenizer, docs, 8)
    assert tokenizer.truncation == truncation and tokenizer.padding == padding
    assert len(tokenizer.encode("the quick brown fox jumps over").ids) == 6  # cut to 4, padded to 6


# kills text_data.py:187 `train_tokenizer(train, ...)` -> `train_tokenizer(documents, ...)` and :186 the makedirs left
# out: the tool trains "the vocabulary that masksub-train-mlm would train" (on the training documents only: the
# held-out ones never seen), and writes it into a directory it makes
def test_the_vocabulary_tool_trains_on_the_training_documents_only(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tokenizers")
    docs = [f"paragraph {i} of words to learn" for i in range(40)]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("\n\n".join(docs))
    seen = []
    real = text_data.train_tokenizer
    monkeypatch.setattr(text_data, "train_tokenizer", lambda d, size: seen.append(list(d)) or real(d, size))
    path = tmp_path / "new" / "dir" / "tok.json"
    assert text_data.main([str(path), "--vocab-size", "64", "--data-dir", str(tmp_path / "corpus")]) == 0
    train, held_out = text_data.split_documents(docs)
    assert held_out and seen == [train] and path.is_file()
    assert f"from {len(train)} training documents ({len(held_out)} of the corpus's {len(docs)} held out)" in (
        capsys.readouterr().out
    )


# helper-233: the vocabulary tool refused what the command refuses (a PATH that is a directory was tokenizers'
# "Is a directory" traceback after the training; a corpus whose documents are all held out gave a vocabulary of the
# special tokens alone, exit 0) and saves whole files only (PATH.partial, then a rename)
def test_the_vocabulary_tool_refuses_a_directory_and_a_corpus_with_nothing_to_train_on(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    with pytest.raises(SystemExit):
        text_data.main([str(tmp_path)])
    assert "is a directory; PATH is the tokenizers JSON file to write" in capsys.readouterr().err
    held_out = next(f"paragraph {i}" for i in range(100) if text_data.split_documents([f"paragraph {i}"])[1])
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(held_out)
    with pytest.raises(SystemExit):
        text_data.main([str(tmp_path / "tok.json"), "--data-dir", str(tmp_path / "corpus")])
    assert "no training documents: the corpus's 1 document(s) are all held out" in capsys.readouterr().err
    assert not (tmp_path / "tok.json").exists()


# helper-233 / helper-234: a symbolic or hard link to a *.txt file was read twice (its documents counted twice), a
# FIFO named *.txt hung the read (an alarm fails the test instead of hanging CI)
def test_a_linked_file_is_read_once_and_a_pipe_is_left_out(tmp_path):
    import signal

    (tmp_path / "a.txt").write_text("one\n\ntwo")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    os.link(tmp_path / "a.txt", tmp_path / "h.txt")
    os.mkfifo(tmp_path / "c.txt")

    class Hung(BaseException):  # not an OSError, which text_dir_documents would rename "cannot be read"
        pass

    def hung(signum, frame):
        raise Hung("text_dir_documents opened the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        assert text_data.text_dir_documents(str(tmp_path)) == ["one", "two"]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    (tmp_path / "d.txt").symlink_to(tmp_path / "nowhere.txt")  # a broken link is still an error that names it
    with pytest.raises(ValueError, match=r"d.txt cannot be read"):
        text_data.text_dir_documents(str(tmp_path))
