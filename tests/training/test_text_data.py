"""training/text_data.py's documented rules: the held-out split, packing, the special-tokens mask, documents
(helper-169's mutation audit: each test fails on a mutant the command's tests let pass)."""

from __future__ import annotations

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
