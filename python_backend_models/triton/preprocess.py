"""Preprocess stage: texts -> token ids (no torch in this process)."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..errors import InputError
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
        from ..registry import family_of

        self.info = self.model_info()
        self.fixed_mode = self.params.get("embedding_mode") or None
        self.core = family_of(self.info).preprocessor(self.info)

    def handle(self, request):
        params = request_parameters(request)
        texts = decode_texts(input_array(request, C.TEXT))
        if self.info.multimodal:
            return self._multimodal(request, params, texts)
        mode = self.fixed_mode or params.get(C.PARAM_EMBEDDING_MODE) or None
        encoded = self.core.encode(
            texts,
            mode=mode,
            truncate_prompt_tokens=int_param(params, C.PARAM_TRUNCATE_PROMPT_TOKENS),
            truncation_side=params.get(C.PARAM_TRUNCATION_SIDE) or "right",
            add_special_tokens=bool_param(params, C.PARAM_ADD_SPECIAL_TOKENS, True),
            purpose=params.get(C.PARAM_PURPOSE, "embedding"),
        )
        return pb_utils.InferenceResponse(output_tensors=self._outputs(request, encoded, len(texts)))

    def _outputs(self, request, encoded, n: int) -> list:
        outputs = [
            pb_utils.Tensor(C.INPUT_IDS, encoded.input_ids),
            pb_utils.Tensor(C.ATTENTION_MASK, encoded.attention_mask),
            pb_utils.Tensor(C.OUTPUT_MASK, encoded.output_mask),
            pb_utils.Tensor(C.PROMPT_TOKENS, encoded.prompt_tokens.reshape(-1, 1)),
        ]
        if C.TOKEN_STRS in requested_outputs(request):
            width = encoded.input_ids.shape[1]
            strs = np.full((n, width), b"", dtype=object)
            for i, toks in enumerate(encoded.tokens):
                strs[i, : len(toks)] = [t.encode("utf-8") for t in toks]
            outputs.append(pb_utils.Tensor(C.TOKEN_STRS, strs))
        return outputs

    def _multimodal(self, request, params, texts):
        """Image models: rows per ``prompt_format``, images from the optional ``images`` tensor."""
        import json

        from ..multimodal import to_bytes_rows

        kwargs = params.get(C.PARAM_CHAT_TEMPLATE_KWARGS) or {}
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs)
            except ValueError:
                raise InputError("chat_template_kwargs must be a JSON object") from None
        if not isinstance(kwargs, dict):
            raise InputError("chat_template_kwargs must be a JSON object")
        done = self.core.encode(
            texts, _images(request, C.IMAGES, len(texts)), prompt_format=params.get(C.PARAM_PROMPT_FORMAT),
            truncate_prompt_tokens=int_param(params, C.PARAM_TRUNCATE_PROMPT_TOKENS),
            truncation_side=params.get(C.PARAM_TRUNCATION_SIDE) or "right",
            add_special_tokens=bool_param(params, C.PARAM_ADD_SPECIAL_TOKENS, True),
            purpose=params.get(C.PARAM_PURPOSE, "embedding"), chat_template_kwargs=kwargs,
            mode=self.fixed_mode or params.get(C.PARAM_EMBEDDING_MODE) or None,
        )
        outputs = self._outputs(request, done.encoded, len(texts))
        outputs += [pb_utils.Tensor(C.PIXEL_VALUES, to_bytes_rows(done.pixel_values)),
                    pb_utils.Tensor(C.IMAGE_SIZES, to_bytes_rows(done.image_sizes))]
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _images(request, name: str, rows: int) -> list[list[bytes]]:
    """An optional ``images``-style input as per-row lists (none sent: no images)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [[] for _ in range(rows)]
    images = tensor.as_numpy()
    if images.ndim != 2 or images.shape[0] != rows:
        raise InputError(f"{name} must be a 2-D tensor with one row per text ({rows}), got shape {list(images.shape)}")
    return [list(row) for row in images]


class PairPreprocessModel(StageModel):
    """Cross-encoders: (query, document) rows -> one pair prompt each (the score template), ids and pixels."""

    def setup(self) -> None:
        from ..registry import family_of

        self.info = self.model_info()
        self.core = family_of(self.info).preprocessor(self.info)

    def handle(self, request):
        from ..multimodal import to_bytes_rows

        params = request_parameters(request)
        queries = decode_texts(input_array(request, C.QUERIES))
        documents = decode_texts(input_array(request, C.DOCUMENTS))
        done = self.core.encode_pairs(
            queries, documents, _images(request, C.QUERY_IMAGES, len(queries)),
            _images(request, C.DOCUMENT_IMAGES, len(documents)), prompt_format=params.get(C.PARAM_PROMPT_FORMAT),
            truncate_prompt_tokens=int_param(params, C.PARAM_TRUNCATE_PROMPT_TOKENS),
        )
        e = done.encoded
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(C.INPUT_IDS, e.input_ids), pb_utils.Tensor(C.ATTENTION_MASK, e.attention_mask),
            pb_utils.Tensor(C.OUTPUT_MASK, e.output_mask),
            pb_utils.Tensor(C.PROMPT_TOKENS, e.prompt_tokens.reshape(-1, 1)),
            pb_utils.Tensor(C.DOCUMENT_PROMPT_TOKENS, np.zeros((len(queries), 1), dtype=np.int32)),
            pb_utils.Tensor(C.PIXEL_VALUES, to_bytes_rows(done.pixel_values)),
            pb_utils.Tensor(C.IMAGE_SIZES, to_bytes_rows(done.image_sizes)),
        ])
