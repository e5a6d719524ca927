import time

import pytest

from recap.models.tokenizer import (
    SPECIAL_TOKENS,
    has_tokenizer_files,
    load_tokenizer,
    train_bpe_tokenizer,
)
from recap.utils import RecapError

TEXTS = [
    f"This song is about {w} and {v}; the singer feels {w} in verse {i}."
    for i in range(300)
    for w, v in [("love", "loss"), ("hope", "rain"), ("summer", "the road")][i % 3 : i % 3 + 1]
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=400)


def test_bart_special_token_layout(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("the singer feels love")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>, as BART
    assert 3 not in ids  # byte-level: no <unk>
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the singer feels love"


def test_vocabulary_is_learned_and_bounded(tokenizer):
    assert 261 < len(tokenizer) <= 400
    # Merges were learned: a frequent word is one or two tokens, not one per byte.
    assert len(tokenizer(" singer", add_special_tokens=False)["input_ids"]) <= 2


def test_targets_and_padding_for_training(tokenizer):
    batch = tokenizer(["love", "the road in summer"], text_target=["hope", "rain"], padding=True)
    assert batch["labels"][0][0] == 0 and batch["labels"][0][-1] == 2
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id  # shorter row padded with 1


def test_training_is_fast():
    start = time.perf_counter()
    train_bpe_tokenizer(TEXTS * 10, vocab_size=2000)
    assert time.perf_counter() - start < 5.0


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert has_tokenizer_files(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "hope and rain; summer on the road"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.pad_token_id == 1


def test_bare_bart_vocabulary_files_load_whole(tokenizer, tmp_path):
    # A folder with only vocab.json + merges.txt (the GPT-2/BART format). transformers 5
    # silently ignores the old `vocab_file=` keywords and yields 5 tokens; we must not.
    tokenizer.backend_tokenizer.model.save(str(tmp_path))
    bart = load_tokenizer(tmp_path)
    assert len(bart) == len(tokenizer)
    text = "the singer feels hope"
    assert bart(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_bad_sources_raise_recap_error(tmp_path):
    with pytest.raises(RecapError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(RecapError):
        train_bpe_tokenizer(TEXTS, vocab_size=100)
