"""The mlm family's batches without a special_tokens_mask (transformers' collator drops it): a warning at the user's
line, and MaskSubTrainer's rebuild from its tokenizer."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import pytest
import torch
from test_mlm import VOCAB, make_batch, tiny_bert

from masksub_kernels.training import MaskSub

transformers = pytest.importorskip("transformers")


def test_a_batch_without_special_tokens_mask_warns_once_per_wrapper():
    # helper-270: without the mask (DataCollatorForLanguageModeling drops it) the sub-branch dropped [CLS] / [SEP]
    # like any token, silently: a UserWarning the first time the sub-branch meets such a batch, per MaskSub
    batch = make_batch(batch=2, seed=4)
    bare = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
    ms = MaskSub(tiny_bert()).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms(batch, seed=1)  # with the mask: nothing
        ms(bare, branch="main")  # the main branch keeps every token
        ms.eval()(bare)
    ms.train()
    said = r"without 'special_tokens_mask' reached the sub-branch, which then drops \[CLS\] / \[SEP\] like any other"
    with pytest.warns(UserWarning, match=said + r" token.*torch.isin\(batch\['input_ids'\]") as record:
        ms(bare, seed=1)
    assert len([w for w in record if "special_tokens_mask" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms(bare, seed=2)  # once per wrapper
        ms(bare, branch="sub", seed=3)
    with pytest.warns(UserWarning, match="without 'special_tokens_mask'"):
        MaskSub(tiny_bert()).train()(bare, branch="sub", seed=1)  # another wrapper: warned again


def test_the_warning_names_the_users_line_on_every_path():
    # stacklevel=3 named the user's line for sub_logits only: through ms(batch) (torch's Module.__call__, forward)
    # it named a line of wrapper.py; user_warning.warn_user counts the frames
    batch = make_batch(batch=2, seed=4)
    bare = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
    model = tiny_bert()
    calls = [
        lambda ms: ms(bare, seed=1),
        lambda ms: ms(bare, branch="sub", seed=1),
        lambda ms: ms.sub_logits(bare, seed=1),
        lambda ms: ms.train_step(bare, None, torch.optim.SGD(ms.parameters(), lr=0.0), seed=1),
    ]
    for call in calls:
        ms = MaskSub(model).train()
        with pytest.warns(UserWarning, match="without 'special_tokens_mask'") as record:
            call(ms)
        assert [w.filename for w in record] == [__file__], [(w.filename, w.lineno) for w in record]


def test_a_masked_lms_special_tokens_mask_is_rebuilt_from_the_tokenizer(tmp_path):
    # DataCollatorForLanguageModeling removes special_tokens_mask from its batches: the sub-branch then dropped
    # [CLS] / [SEP] (with a warning); MaskSubTrainer rebuilds it from processing_class's all_special_ids
    from test_hf_trainer import _args
    from tokenizers import Tokenizer, models

    from masksub_kernels.training.hf_trainer import MaskSubTrainer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as test_mlm's
    vocab = {name: i for i, name in enumerate(specials + [f"w{i}" for i in range(len(specials), VOCAB)])}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")), pad_token="[PAD]",
        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": [2, 1, *torch.randint(5, VOCAB, (21,), generator=g).tolist(), 3]} for _ in range(4)]
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    trainer = MaskSubTrainer(model=tiny_bert(), args=_args(tmp_path, per_device_train_batch_size=4, max_steps=1),
                             train_dataset=rows, data_collator=collator, processing_class=tokenizer,
                             masksub={"mask_ratio": 0.5})  # fmt: skip
    seen, own = [], trainer.masksub.forward
    trainer.masksub.forward = lambda inputs, *args, **kwargs: seen.append(dict(inputs)) or own(inputs, *args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (no missing-special-mask warning)
        trainer.train()
    (got,) = seen
    ids = got["input_ids"]
    assert torch.equal(got["special_tokens_mask"], (ids < len(specials)) & (ids != 1))  # [UNK] (1): a word of the text
    assert got["special_tokens_mask"][:, [0, -1]].all()  # [CLS] / [SEP] marked: kept by the sub-branch


def test_through_the_trainer_the_warning_names_the_users_train_call(tmp_path):
    # helper-323: through MaskSubTrainer (no tokenizer to rebuild the mask from) the warning named transformers'
    # trainer.py, the first frame outside masksub_kernels and torch; now the user's trainer.train() line
    from test_hf_trainer import _args

    from masksub_kernels.training.hf_trainer import MaskSubTrainer

    batch = make_batch(batch=4, seed=3)
    rows = [{key: value[i] for key, value in batch.items() if key != "special_tokens_mask"} for i in range(4)]
    trainer = MaskSubTrainer(model=tiny_bert(), args=_args(tmp_path, per_device_train_batch_size=4, max_steps=1),
                             train_dataset=rows, masksub={"mask_ratio": 0.5})  # fmt: skip
    with pytest.warns(UserWarning, match="without 'special_tokens_mask'") as record:
        trainer.train()
    said = [w for w in record if "special_tokens_mask" in str(w.message)]
    assert [w.filename for w in said] == [__file__], [(w.filename, w.lineno) for w in said]


# helper-327's mutation audit of MaskSubTrainer._with_special_tokens_mask and warn_user
class _Tok:
    all_special_ids = (0, 1, 2, 3, 4)
    unk_token_id = 1


def _rebuild(processing_class, inputs, trainer=None):
    from masksub_kernels.training.hf_trainer import MaskSubTrainer

    trainer = trainer or SimpleNamespace(processing_class=processing_class)
    return MaskSubTrainer._with_special_tokens_mask(trainer, inputs), trainer


def test_a_batchs_own_special_tokens_mask_is_left_as_it_is():
    # kills H2 (the mask rebuilt even where the batch has one: a user's own mask overwritten)
    ids = torch.tensor([[2, 7, 8, 3]])
    own = torch.tensor([[True, True, False, True]])
    out, _ = _rebuild(_Tok(), {"input_ids": ids, "special_tokens_mask": own})
    assert out["special_tokens_mask"] is own


def test_a_batch_without_input_ids_goes_as_it_is():
    # kills H3 (no isinstance check: a batch of inputs_embeds raised KeyError 'input_ids')
    batch = {"inputs_embeds": torch.zeros(1, 4, 8)}
    out, _ = _rebuild(_Tok(), batch)
    assert out is batch


def test_a_processors_tokenizer_gives_the_special_ids():
    # kills H6 (processing_class taken as the tokenizer: a processor, which has no all_special_ids, left it unbuilt)
    processor = SimpleNamespace(tokenizer=_Tok())
    out, _ = _rebuild(processor, {"input_ids": torch.tensor([[2, 1, 9, 3]])})
    assert out["special_tokens_mask"].tolist() == [[True, False, False, True]]


def test_the_special_ids_are_remade_for_another_device():
    # kills H5 (the cached ids kept on the first batch's device)
    _, trainer = _rebuild(_Tok(), {"input_ids": torch.tensor([[2, 9, 3]])})
    assert trainer._special_ids.device.type == "cpu"
    _rebuild(None, {"input_ids": torch.tensor([[2, 9, 3]], device="meta")}, trainer)
    assert trainer._special_ids.device.type == "meta"


def test_accelerates_frames_are_skipped_too():
    # kills U4 (accelerate dropped from user_warning._LOOPS: a warning raised under accelerate's code named it)
    accelerate = pytest.importorskip("accelerate")
    from masksub_kernels.training.user_warning import warn_user

    inside = os.path.join(os.path.dirname(os.path.abspath(accelerate.__file__)), "h327_loop.py")
    loop = {"warn_user": warn_user}
    exec(compile("def run():\n    warn_user('h327')\n", inside, "exec"), loop)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loop["run"]()
    assert [w.filename for w in record] == [__file__], [w.filename for w in record]
