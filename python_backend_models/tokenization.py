"""Text -> token ids, exactly as the reference libraries do it.  Pure Python + ``tokenizers``.

Two ways to encode a text:

* **vLLM's** (the default): the HF fast tokenizer with special tokens, every token kept, an input past
  ``max_model_len`` refused with vLLM's context-length message unless ``truncate_prompt_tokens`` asks
  for truncation.
* **ColBERT query / document modes** (opt in, ``embedding_mode``): the checkpoint's own conventions as
  PyLate applies them (prefix token inserted after the first token, queries padded to
  ``query_length`` with the expansion token, document punctuation dropped from the output).

Not supported: pair inputs (``text_pair``), chat templates, images.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer

from .checkpoint import CheckpointError, read_json_if_exists
from .errors import InputError

QUERY = "query"
DOCUMENT = "document"
EMBEDDING_MODES = (QUERY, DOCUMENT)


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens the conventions need (None where the tokenizer has none)."""

    pad: int | None
    mask: int | None
    eos: int | None
    bos: int | None
    unk: int | None
    cls: int | None
    model_max_length: int | None

    @classmethod
    def read(cls, path: Path, tokenizer: Tokenizer) -> "SpecialTokens":
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later files win
            config.update(read_json_if_exists(path / name) or {})

        def token_id(key: str) -> int | None:
            content = _token_content(config.get(key))
            return None if content is None else tokenizer.token_to_id(content)

        max_len = config.get("model_max_length")
        return cls(
            pad=token_id("pad_token"),
            mask=token_id("mask_token"),
            eos=token_id("eos_token") if config.get("eos_token") else token_id("sep_token"),
            bos=token_id("bos_token"),
            unk=token_id("unk_token"),
            cls=token_id("cls_token"),
            model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e9 else None,
        )


@dataclass(frozen=True)
class ColbertConventions:
    """How a ColBERT checkpoint wants queries and documents encoded (PyLate's reading of it)."""

    query_prefix_id: int | None
    document_prefix_id: int | None
    query_length: int
    document_length: int
    do_query_expansion: bool
    attend_to_expansion_tokens: bool
    expansion_id: int | None
    skiplist_ids: frozenset[int]

    @classmethod
    def read(cls, path: Path, tokenizer: Tokenizer, special: SpecialTokens) -> "ColbertConventions | None":
        """From ``config_sentence_transformers.json`` (PyLate) or ``artifact.metadata`` (Stanford).

        PyLate's files win when a checkpoint has both, as PyLate itself reads them.  Returns None for
        checkpoints with neither (then only vLLM's symmetric encoding is available).
        """
        st = read_json_if_exists(path / "config_sentence_transformers.json") or {}
        stanford = read_json_if_exists(path / "artifact.metadata")
        if st.get("model_type") == "ColBERT" or "query_prefix" in st:
            query_prefix = st.get("query_prefix", "[Q] ")
            document_prefix = st.get("document_prefix", "[D] ")
            query_length = st.get("query_length", 32)
            document_length = st.get("document_length", 180)
            expansion = st.get("do_query_expansion", True)
            attend = st.get("attend_to_expansion_tokens", False)
            skiplist = st.get("skiplist_words", list(string.punctuation))
        elif stanford is not None:
            query_prefix = stanford.get("query_token_id", "[unused0]")
            document_prefix = stanford.get("doc_token_id", "[unused1]")
            query_length = stanford.get("query_maxlen", 32)
            document_length = stanford.get("doc_maxlen", 180)
            expansion = True
            attend = stanford.get("attend_to_mask_tokens", False)
            skiplist = list(string.punctuation) if stanford.get("mask_punctuation", True) else []
        else:
            return None

        def prefix_id(prefix: str | None) -> int | None:
            if not prefix:
                return None
            tid = tokenizer.token_to_id(prefix)
            if tid is None:
                raise CheckpointError(
                    f"{path}: the ColBERT prefix {prefix!r} is not a token of the tokenizer; a checkpoint "
                    "saved by PyLate carries it as an added token"
                )
            return tid

        # PyLate pads queries with the mask token, else EOS, else the tokenizer's pad token.
        expansion_id = next((t for t in (special.mask, special.eos, special.pad) if t is not None), None)
        if expansion and expansion_id is None:
            raise CheckpointError(f"{path}: query expansion needs a mask, EOS or pad token; the tokenizer has none")
        # As transformers' convert_tokens_to_ids: a word missing from the vocabulary maps to UNK.
        skip_ids = set()
        for word in skiplist:
            tid = tokenizer.token_to_id(word)
            tid = special.unk if tid is None else tid
            if tid is not None:
                skip_ids.add(tid)
        return cls(
            query_prefix_id=prefix_id(query_prefix),
            document_prefix_id=prefix_id(document_prefix),
            query_length=int(query_length),
            document_length=int(document_length),
            do_query_expansion=bool(expansion),
            attend_to_expansion_tokens=bool(attend) and bool(expansion),
            expansion_id=expansion_id,
            skiplist_ids=frozenset(skip_ids),
        )


@dataclass
class Encoded:
    """A batch of encoded texts, right-padded.

    input_ids, attention_mask: (n, max_len) int64; output_mask: (n, max_len) bool, True where a
    vector is returned; prompt_tokens: (n,) int32 tokens fed to the model.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    output_mask: np.ndarray
    prompt_tokens: np.ndarray
    tokens: list[list[str]]


def context_length_error(max_model_len: int, n_tokens: int, purpose: str = "embedding") -> InputError:
    what = "score" if purpose == "score" else "embedding generation"
    return InputError(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{n_tokens} tokens in the input for {what}. Please reduce the length of the input."
    )


class TextPreprocessor:
    """Tokenises texts for one checkpoint.  Not thread-safe (truncation is tokenizer state)."""

    def __init__(self, path: Path, max_model_len: int, *, do_lower_case: bool = False, colbert: bool = False):
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise CheckpointError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.special = SpecialTokens.read(path, self.tokenizer)
        self.max_model_len = max_model_len
        self.do_lower_case = do_lower_case
        # Why embedding_mode is unavailable for a ColBERT checkpoint whose conventions cannot be applied
        # (e.g. a prefix that is not a token): vLLM serves such a checkpoint, and its default
        # (symmetric) encoding never uses them, so only the modes are refused.
        self.conventions_error: str | None = None
        self.conventions = None
        if colbert:
            try:
                self.conventions = ColbertConventions.read(path, self.tokenizer, self.special)
            except CheckpointError as exc:
                self.conventions_error = str(exc)
        self.pad_id = self.special.pad if self.special.pad is not None else 0

    # -- public ------------------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        *,
        mode: str | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str = "right",
        add_special_tokens: bool = True,
        purpose: str = "embedding",
    ) -> Encoded:
        if truncation_side not in ("left", "right"):
            raise InputError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"input {i} is not a string")
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        if mode is None:
            rows = self._encode_vllm(texts, truncate_prompt_tokens, truncation_side, add_special_tokens, purpose)
        elif mode in EMBEDDING_MODES:
            if self.conventions_error is not None:
                raise InputError(f"embedding_mode {mode!r} is not available for this checkpoint: "
                                 f"{self.conventions_error}")
            if self.conventions is None:
                raise InputError(
                    f"embedding_mode {mode!r} needs a ColBERT checkpoint with PyLate "
                    "(config_sentence_transformers.json) or Stanford (artifact.metadata) conventions"
                )
            rows = [self._encode_colbert(t, mode == QUERY) for t in texts]
        else:
            raise InputError(f"embedding_mode must be one of {list(EMBEDDING_MODES)}, got {mode!r}")
        return _pad(rows, self.pad_id)

    # -- vLLM: every token, no markers ---------------------------------------------------------------
    def _encode_vllm(self, texts, truncate, side, add_special_tokens, purpose):
        if truncate is not None:
            if truncate == -1:
                truncate = self.max_model_len
            if truncate < 1:
                raise InputError(f"truncate_prompt_tokens must be -1 or at least 1, got {truncate}")
            if truncate > self.max_model_len:
                raise InputError(
                    f"truncate_prompt_tokens={truncate} cannot be greater than max_model_len - max_output_tokens = "
                    f"{self.max_model_len}. Please request a smaller truncation size."
                )
        if truncate is not None and side == "right":
            self.tokenizer.enable_truncation(max_length=truncate, strategy="longest_first", direction="right")
        try:
            encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        finally:
            self.tokenizer.no_truncation()
        rows = []
        for enc in encodings:
            ids, tokens = list(enc.ids), list(enc.tokens)
            if truncate is not None and side == "left" and len(ids) > truncate:
                ids, tokens = ids[-truncate:], tokens[-truncate:]
            if purpose != "tokenize" and len(ids) > self.max_model_len:
                raise context_length_error(self.max_model_len, len(ids), purpose)
            if not ids:
                raise InputError("an input has no tokens; send a non-empty text")
            ones = [1] * len(ids)
            rows.append((ids, ones, ones, tokens))
        return rows

    # -- PyLate's ColBERT conventions ---------------------------------------------------------------
    def _encode_colbert(self, text: str, is_query: bool):
        c = self.conventions
        if c is None:  # encode() checks first; this keeps the method safe on its own
            raise InputError("ColBERT query/document encoding needs the checkpoint's ColBERT conventions")
        # The checkpoint's lengths, never past what the served model accepts.
        length = min(c.query_length if is_query else c.document_length, self.max_model_len)
        prefix = c.query_prefix_id if is_query else c.document_prefix_id
        budget = length - 1 if prefix is not None else length
        self.tokenizer.enable_truncation(max_length=budget, strategy="longest_first", direction="right")
        try:
            enc = self.tokenizer.encode(text.strip())
        finally:
            self.tokenizer.no_truncation()
        ids, tokens = list(enc.ids), list(enc.tokens)
        attention = [1] * len(ids)
        if is_query and c.do_query_expansion and len(ids) < budget:
            extra = budget - len(ids)
            ids += [c.expansion_id] * extra
            tokens += [self.tokenizer.id_to_token(c.expansion_id)] * extra
            attention += [1 if c.attend_to_expansion_tokens else 0] * extra
        if prefix is not None:
            at = 1 if ids else 0
            ids.insert(at, prefix)
            tokens.insert(at, self.tokenizer.id_to_token(prefix))
            attention.insert(at, 1)
        if is_query:
            output = [1] * len(ids)
        else:
            output = [0 if tid in c.skiplist_ids else 1 for tid in ids]
        return ids, attention, output, tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _pad(rows, pad_id: int) -> Encoded:
    n = len(rows)
    width = max((len(r[0]) for r in rows), default=0)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    attention = np.zeros((n, width), dtype=np.int64)
    output = np.zeros((n, width), dtype=bool)
    prompt = np.zeros((n,), dtype=np.int32)
    for i, (ids, att, out, _tokens) in enumerate(rows):
        k = len(ids)
        input_ids[i, :k] = ids
        attention[i, :k] = att
        output[i, :k] = np.asarray(out, dtype=bool)
        prompt[i] = k
    return Encoded(input_ids, attention, output, prompt, [r[3] for r in rows])
