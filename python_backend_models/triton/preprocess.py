"""Preprocess stage: texts -> token ids (no torch in this process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..errors import InputError
from ..tokenization import TextPreprocessor
from .base import StageModel, bool_param, input_array, int_param, request_parameters, requested_outputs


def decode_texts(array: np.ndarray) -> list[str]:
    texts = []
    for i, raw in enumerate(array.reshape(-1)):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"input {i} is not valid UTF-8") from None
        if not isinstance(raw, str):
            raise InputError(f"input {i} is not a string")
        if raw == "":
            raise InputError(f"input {i} is an empty string")
        texts.append(raw)
    return texts


class PreprocessModel(StageModel):
    """Config parameters: ``model_card`` (ModelInfo JSON); ``embedding_mode`` fixes the mode (the two
    sides of a score ensemble with ColBERT conventions) instead of reading it per request."""

    def setup(self) -> None:
        self.info = self.model_info()
        self.fixed_mode = self.params.get("embedding_mode") or None
        self.core = TextPreprocessor(
            Path(self.info.path), self.info.max_model_len, do_lower_case=self.info.do_lower_case,
            colbert=self.info.family == "colbert",
        )

    def handle(self, request):
        params = request_parameters(request)
        texts = decode_texts(input_array(request, C.TEXT))
        mode = self.fixed_mode or params.get(C.PARAM_EMBEDDING_MODE) or None
        encoded = self.core.encode(
            texts,
            mode=mode,
            truncate_prompt_tokens=int_param(params, C.PARAM_TRUNCATE_PROMPT_TOKENS),
            truncation_side=params.get(C.PARAM_TRUNCATION_SIDE) or "right",
            add_special_tokens=bool_param(params, C.PARAM_ADD_SPECIAL_TOKENS, True),
            purpose=params.get(C.PARAM_PURPOSE, "embedding"),
        )
        outputs = [
            pb_utils.Tensor(C.INPUT_IDS, encoded.input_ids),
            pb_utils.Tensor(C.ATTENTION_MASK, encoded.attention_mask),
            pb_utils.Tensor(C.OUTPUT_MASK, encoded.output_mask),
            pb_utils.Tensor(C.PROMPT_TOKENS, encoded.prompt_tokens.reshape(-1, 1)),
        ]
        if C.TOKEN_STRS in requested_outputs(request):
            width = encoded.input_ids.shape[1]
            strs = np.full((len(texts), width), b"", dtype=object)
            for i, toks in enumerate(encoded.tokens):
                strs[i, : len(toks)] = [t.encode("utf-8") for t in toks]
            outputs.append(pb_utils.Tensor(C.TOKEN_STRS, strs))
        return pb_utils.InferenceResponse(output_tensors=outputs)
