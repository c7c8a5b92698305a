"""Token ids from ``TextPreprocessor`` against the reference tokenisers.

* vLLM's mode (no ``embedding_mode``): the ids ``transformers.AutoTokenizer`` gives with special tokens,
  every token kept, vLLM's length error and truncation rules.
* ColBERT query / document modes: the ids, attention masks and kept positions that PyLate's semantics
  give (``references.pylate_input_ids``, sentence-transformers 6.2 ``MultiVectorEncoder``), for the
  Stanford and PyLate layouts and the PyLate flag variants.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

import references
from python_backend_models.errors import InputError
from python_backend_models.tokenization import TextPreprocessor

MINILM_MAX_LEN = 256  # sentence_bert_config.json max_seq_length of all-MiniLM-L6-v2
TINY_MAX_LEN = 512

COLBERT_CHECKPOINTS = ["stanford_colbert", "pylate_colbert", "pylate_colbert_no_expansion", "pylate_colbert_attend"]
VLLM_CHECKPOINTS = ["minilm_path", "stanford_colbert", "pylate_colbert"]

VLLM_TEXTS = [
    "What is machine learning?",
    "Ünïcödé café — naïve façade, 日本語のテキスト and an emoji 😀!?",
    "Hello,world...(x)[y]{z} <tag> a+b=c; 100% $5.00 #hash @user ~tilde",
    "  leading and trailing spaces\tand\nnewlines  ",
    "don't stop-believing: it's O'Reilly's",
    "[Q] literal markers [MASK] [unused0] [SEP] inside the text",
    "a",
]
QUERY_TEXTS = [
    "hello",
    "What is late interaction?",
    "Ünïcödé café — naïve 日本語!",
    " ".join(f"query word{i}" for i in range(40)),  # > query_length tokens: truncated
]
DOCUMENT_TEXTS = [
    "The cat sat on the mat.",
    "Hello, world! (Punctuation: $5.00; 100%...) [x] {y} -- isn't it?",
    "Ünïcödé café — naïve 日本語!",
    " ".join(f"document token{i}." for i in range(120)),  # > document_length tokens: truncated
]


def preprocessor(path: Path, *, colbert: bool = True, max_model_len: int | None = None) -> TextPreprocessor:
    if max_model_len is None:
        max_model_len = MINILM_MAX_LEN if not colbert else TINY_MAX_LEN
    return TextPreprocessor(path, max_model_len, colbert=colbert)


def row(encoded, i: int) -> dict[str, list[int]]:
    """Row ``i`` of a batch without its right padding, in ``pylate_input_ids``'s format."""
    n = int(encoded.prompt_tokens[i])
    return {
        "input_ids": encoded.input_ids[i, :n].tolist(),
        "attention_mask": encoded.attention_mask[i, :n].tolist(),
        "kept": encoded.output_mask[i, :n].astype(np.int64).tolist(),
    }


def hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# --------------------------------------------------------------------------------------------------
# vLLM's mode
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", VLLM_CHECKPOINTS)
@pytest.mark.parametrize("add_special_tokens", [True, False], ids=["special", "no_special"])
def test_vllm_mode_ids_equal_autotokenizer(request, checkpoint, add_special_tokens):
    path = request.getfixturevalue(checkpoint)
    tokenizer = hf_tokenizer(path)
    encoded = preprocessor(path, colbert=checkpoint != "minilm_path").encode(
        VLLM_TEXTS, add_special_tokens=add_special_tokens
    )
    for i, text in enumerate(VLLM_TEXTS):
        expected = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        got = row(encoded, i)
        assert got["input_ids"] == expected, text
        assert got["attention_mask"] == [1] * len(expected)
        assert got["kept"] == [1] * len(expected), "vLLM returns every token"
        assert encoded.prompt_tokens[i] == len(expected)


def test_vllm_mode_ignores_padding_and_truncation_baked_into_tokenizer_json(stanford_colbert):
    # The Stanford fixture copies MiniLM's tokenizer.json, which carries Fixed-128 padding and truncation 128.
    text = " ".join(["word"] * 300)
    encoded = preprocessor(stanford_colbert).encode([text, "short"])
    assert encoded.prompt_tokens.tolist() == [302, 3]
    assert encoded.input_ids[0, :302].tolist() == hf_tokenizer(stanford_colbert)(text)["input_ids"]


def test_minilm_known_token_ids(minilm_path):
    encoded = preprocessor(minilm_path, colbert=False).encode(["What is machine learning?"])
    assert row(encoded, 0)["input_ids"] == [101, 2054, 2003, 3698, 4083, 1029, 102]


def test_batch_rows_are_right_padded_with_masks_off(pylate_colbert):
    encoded = preprocessor(pylate_colbert).encode(["a b c d e", "a"])
    assert encoded.input_ids.shape == encoded.attention_mask.shape == encoded.output_mask.shape == (2, 7)
    assert encoded.input_ids.dtype == np.int64 and encoded.attention_mask.dtype == np.int64
    assert encoded.output_mask.dtype == np.bool_ and encoded.prompt_tokens.dtype == np.int32
    assert encoded.prompt_tokens.tolist() == [7, 3]
    assert encoded.attention_mask[1, 3:].tolist() == [0] * 4
    assert not encoded.output_mask[1, 3:].any()
    assert [len(t) for t in encoded.tokens] == [7, 3]


def test_input_past_max_model_len_is_refused_with_vllms_message(minilm_path):
    text = " ".join(["word"] * 300)  # 302 tokens
    pre = preprocessor(minilm_path, colbert=False)
    with pytest.raises(InputError) as excinfo:
        pre.encode(["fine", text])
    assert str(excinfo.value) == (
        "This model's maximum context length is 256 tokens. However, you requested 302 tokens in the input "
        "for embedding generation. Please reduce the length of the input."
    )
    with pytest.raises(InputError) as excinfo:
        pre.encode([text], purpose="score")
    assert str(excinfo.value) == (
        "This model's maximum context length is 256 tokens. However, you requested 302 tokens in the input "
        "for score. Please reduce the length of the input."
    )


def test_input_of_exactly_max_model_len_tokens_is_accepted(minilm_path):
    text = " ".join(["word"] * (MINILM_MAX_LEN - 2))
    encoded = preprocessor(minilm_path, colbert=False).encode([text])
    assert encoded.prompt_tokens.tolist() == [MINILM_MAX_LEN]


@pytest.mark.parametrize("checkpoint", ["minilm_path", "stanford_colbert"])
@pytest.mark.parametrize("keep", [3, 5, 12])
def test_right_truncation_equals_hf_truncation_and_keeps_special_tokens(request, checkpoint, keep):
    path = request.getfixturevalue(checkpoint)
    text = " ".join(f"w{i}" for i in range(40))
    encoded = preprocessor(path, colbert=checkpoint != "minilm_path").encode([text], truncate_prompt_tokens=keep)
    expected = hf_tokenizer(path)(text, truncation=True, max_length=keep)["input_ids"]
    assert row(encoded, 0)["input_ids"] == expected
    assert len(expected) == keep and expected[0] == 101 and expected[-1] == 102


@pytest.mark.parametrize("keep", [3, 5, 12])
def test_left_truncation_keeps_the_last_ids(minilm_path, keep):
    # vLLM's renderer truncates left after tokenisation: the last N ids, [CLS] dropped, [SEP] kept.
    text = " ".join(f"w{i}" for i in range(40))
    full = hf_tokenizer(minilm_path)(text)["input_ids"]
    encoded = preprocessor(minilm_path, colbert=False).encode(
        [text], truncate_prompt_tokens=keep, truncation_side="left"
    )
    assert row(encoded, 0)["input_ids"] == full[-keep:]


def test_truncation_shorter_than_input_changes_nothing(minilm_path):
    pre = preprocessor(minilm_path, colbert=False)
    plain = pre.encode(["What is machine learning?"])
    for side in ("left", "right"):
        truncated = pre.encode(["What is machine learning?"], truncate_prompt_tokens=50, truncation_side=side)
        assert row(truncated, 0) == row(plain, 0)


def test_truncate_minus_one_means_max_model_len(minilm_path):
    text = " ".join(["word"] * 300)
    encoded = preprocessor(minilm_path, colbert=False).encode([text], truncate_prompt_tokens=-1)
    assert encoded.prompt_tokens.tolist() == [MINILM_MAX_LEN]
    assert encoded.input_ids[0, -1] == 102


def test_truncate_past_max_model_len_is_refused_with_vllms_message(minilm_path):
    with pytest.raises(InputError) as excinfo:
        preprocessor(minilm_path, colbert=False).encode(["hello"], truncate_prompt_tokens=257)
    assert str(excinfo.value) == (
        "truncate_prompt_tokens=257 cannot be greater than max_model_len - max_output_tokens = 256. "
        "Please request a smaller truncation size."
    )


@pytest.mark.parametrize("bad", [0, -2])
def test_truncate_below_minus_one_or_zero_is_refused(minilm_path, bad):
    with pytest.raises(InputError, match="truncate_prompt_tokens"):
        preprocessor(minilm_path, colbert=False).encode(["hello"], truncate_prompt_tokens=bad)


def test_unknown_truncation_side_is_refused(minilm_path):
    with pytest.raises(InputError, match="truncation_side must be 'left' or 'right', got 'middle'"):
        preprocessor(minilm_path, colbert=False).encode(["hello"], truncate_prompt_tokens=2, truncation_side="middle")


@pytest.mark.parametrize("text", ["", "   \t\n"], ids=["empty", "whitespace"])
def test_text_without_any_token_is_rejected(minilm_path, text):
    with pytest.raises(InputError, match="no tokens"):
        preprocessor(minilm_path, colbert=False).encode(["fine", text], add_special_tokens=False)


def test_empty_string_is_rejected_before_tokenization():
    """The preprocess stage refuses "" by name (tested on its pure helper; pb_utils is faked)."""
    import fake_pb_utils

    with fake_pb_utils.installed():
        from python_backend_models.triton.preprocess import decode_texts

        texts = np.array([[b"fine"], [b""]], dtype=object)
        with pytest.raises(InputError, match="input 1 is an empty string"):
            decode_texts(texts)
        assert decode_texts(np.array([[b"caf\xc3\xa9"]], dtype=object)) == ["café"]
        with pytest.raises(InputError, match="input 0 is not valid UTF-8"):
            decode_texts(np.array([[b"\xff\xfe"]], dtype=object))


def test_non_string_input_is_rejected(minilm_path):
    with pytest.raises(InputError, match="input 1 is not a string"):
        preprocessor(minilm_path, colbert=False).encode(["fine", b"bytes"])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------------
# ColBERT query / document modes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", COLBERT_CHECKPOINTS)
def test_query_mode_ids_and_masks_equal_pylate(request, checkpoint):
    path = request.getfixturevalue(checkpoint)
    encoded = preprocessor(path).encode(QUERY_TEXTS, mode="query")
    expected = references.pylate_input_ids(path, QUERY_TEXTS, is_query=True)
    for i, text in enumerate(QUERY_TEXTS):
        assert row(encoded, i) == expected[i], text


@pytest.mark.parametrize("checkpoint", COLBERT_CHECKPOINTS)
def test_document_mode_ids_and_masks_equal_pylate(request, checkpoint):
    path = request.getfixturevalue(checkpoint)
    encoded = preprocessor(path).encode(DOCUMENT_TEXTS, mode="document")
    expected = references.pylate_input_ids(path, DOCUMENT_TEXTS, is_query=False)
    for i, text in enumerate(DOCUMENT_TEXTS):
        assert row(encoded, i) == expected[i], text


@pytest.mark.parametrize(
    "checkpoint, prefix_id", [("stanford_colbert", 1), ("pylate_colbert", 30522)], ids=["stanford", "pylate"]
)
def test_query_is_prefixed_after_cls_and_expanded_to_query_length_with_mask(request, checkpoint, prefix_id):
    encoded = preprocessor(request.getfixturevalue(checkpoint)).encode(["hello"], mode="query")
    assert row(encoded, 0) == {
        "input_ids": [101, prefix_id, 7592, 102] + [103] * 28,
        "attention_mask": [1, 1, 1, 1] + [0] * 28,
        "kept": [1] * 32,
    }


def test_query_expansion_off_keeps_only_real_tokens(pylate_colbert_no_expansion):
    encoded = preprocessor(pylate_colbert_no_expansion).encode(["hello"], mode="query")
    assert row(encoded, 0) == {"input_ids": [101, 30522, 7592, 102], "attention_mask": [1] * 4, "kept": [1] * 4}


def test_attend_to_expansion_tokens_attends_to_every_position(pylate_colbert_attend):
    encoded = preprocessor(pylate_colbert_attend).encode(["hello"], mode="query")
    assert row(encoded, 0)["attention_mask"] == [1] * 32


@pytest.mark.parametrize("checkpoint", COLBERT_CHECKPOINTS)
def test_long_query_is_truncated_to_query_length_ending_in_sep(request, checkpoint):
    encoded = preprocessor(request.getfixturevalue(checkpoint)).encode([QUERY_TEXTS[-1]], mode="query")
    got = row(encoded, 0)
    assert len(got["input_ids"]) == 32
    assert got["input_ids"][-1] == 102 and 103 not in got["input_ids"]


@pytest.mark.parametrize("checkpoint", ["stanford_colbert", "pylate_colbert"])
def test_long_document_is_truncated_to_document_length_ending_in_sep(request, checkpoint):
    encoded = preprocessor(request.getfixturevalue(checkpoint)).encode([DOCUMENT_TEXTS[-1]], mode="document")
    got = row(encoded, 0)
    assert len(got["input_ids"]) == 180 and got["input_ids"][-1] == 102


def test_document_punctuation_is_encoded_but_not_returned(pylate_colbert):
    encoded = preprocessor(pylate_colbert).encode(["The cat sat on the mat."], mode="document")
    got = row(encoded, 0)
    period = hf_tokenizer(pylate_colbert).convert_tokens_to_ids(".")
    assert got["input_ids"] == [101, 30523, 1996, 4937, 2938, 2006, 1996, 13523, period, 102]
    assert got["attention_mask"] == [1] * 10
    assert got["kept"] == [1] * 8 + [0, 1]


def test_document_skiplist_covers_every_punctuation_character(pylate_colbert):
    text = " ".join(string.punctuation)
    got = row(preprocessor(pylate_colbert).encode([text], mode="document"), 0)
    assert got["kept"] == [1, 1] + [0] * len(string.punctuation) + [1]


def test_unknown_embedding_mode_is_rejected_naming_the_choices(pylate_colbert):
    with pytest.raises(InputError) as excinfo:
        preprocessor(pylate_colbert).encode(["hello"], mode="passage")
    message = str(excinfo.value)
    assert "embedding_mode" in message and "'passage'" in message
    assert "query" in message and "document" in message


@pytest.mark.parametrize("mode", ["query", "document"])
def test_embedding_mode_on_a_checkpoint_without_conventions_is_rejected(minilm_path, mode):
    with pytest.raises(InputError) as excinfo:
        preprocessor(minilm_path, colbert=False).encode(["hello"], mode=mode)
    message = str(excinfo.value)
    assert f"embedding_mode {mode!r}" in message
    assert "config_sentence_transformers.json" in message and "artifact.metadata" in message


@pytest.mark.parametrize("mode", ["query", "document"])
def test_embedding_modes_never_exceed_max_model_len(pylate_colbert, mode):
    pre = preprocessor(pylate_colbert, max_model_len=24)
    text = " ".join(["word"] * 300)
    try:
        encoded = pre.encode([text], mode=mode)
    except InputError:
        return  # refusing is as good as truncating
    assert int(encoded.prompt_tokens[0]) <= 24


def test_a_colbert_prefix_that_is_not_a_token_leaves_vllms_encoding_and_explains_the_modes(
        pylate_colbert_prefix_not_a_token, pylate_colbert):
    pre = TextPreprocessor(pylate_colbert_prefix_not_a_token, 512, colbert=True)  # no longer refused here
    same = TextPreprocessor(pylate_colbert, 512, colbert=True).encode(["What is ColBERT?"])
    np.testing.assert_array_equal(pre.encode(["What is ColBERT?"]).input_ids, same.input_ids)
    for mode in ("query", "document"):
        with pytest.raises(InputError, match=r"embedding_mode '%s' is not available .*'\[QX\] ' is not a token" % mode):
            pre.encode(["What is ColBERT?"], mode=mode)
