"""Encoder stage: token ids of every request in the dynamic batch -> one packed set of forward passes."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..errors import InputError
from .base import (
    StageModel, bool_param, error_response, input_array, int_param, request_parameters, requested_outputs,
)


class EncoderModel(StageModel):
    """Config parameters: ``model_card``, ``dtype`` (auto|float32|float16|bfloat16), ``max_batch_tokens``."""

    def setup(self) -> None:
        from ..families import load_encoder

        self.info = self.model_info()
        device = f"cuda:{self.device_id}" if self.instance_kind == "GPU" else "cpu"
        self.encoder = load_encoder(self.info, device=device, dtype=self.params.get("dtype", "auto"))
        self.encoder.max_batch_tokens = int(self.params.get("max_batch_tokens", "16384"))

    def execute(self, requests):
        responses = [None] * len(requests)
        items, normalize, sizes, want_pooled, want_tokens = [], [], [], False, False
        spans = {}
        for r, request in enumerate(requests):
            try:
                params = request_parameters(request)
                ids = input_array(request, C.INPUT_IDS)
                att = input_array(request, C.ATTENTION_MASK)
                out = input_array(request, C.OUTPUT_MASK)
                if not (ids.shape == att.shape == out.shape) or ids.ndim != 2:
                    raise InputError("input_ids, attention_mask and output_mask must have the same 2-D shape")
                self.encoder.check(ids, att, out)
                norm = bool_param(params, C.PARAM_USE_ACTIVATION, True)
                size = self._dimensions(int_param(params, C.PARAM_DIMENSIONS))
                wanted = requested_outputs(request)
            except InputError as exc:
                responses[r] = error_response(str(exc))
                continue
            want_pooled |= C.EMBEDDINGS in wanted
            want_tokens |= C.TOKEN_EMBEDDINGS in wanted or not wanted
            spans[r] = (len(items), len(items) + ids.shape[0], size or self.info.dim)
            for row in range(ids.shape[0]):
                items.append((ids[row], att[row], out[row]))
                normalize.append(norm)
                sizes.append(size)
        if self.info.pooled_dim is None:
            want_pooled = False
        results = []
        if items:
            try:
                results = self.encoder.encode(items, want_tokens=want_tokens, want_pooled=want_pooled,
                                              normalize=normalize, dimensions=sizes)
            except Exception as exc:
                self.log.log_error(f"{self.model_name}: batch of {len(items)} texts failed: {exc}")
                return [resp or error_response(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                        for resp in responses]
        for r, (lo, hi, dim) in spans.items():
            responses[r] = self._response(results[lo:hi], want_tokens, want_pooled, dim)
        return responses

    def _dimensions(self, size: int | None) -> int | None:
        """vLLM's checks of a request's ``dimensions`` (matryoshka output size)."""
        if size is None:
            return None
        # As vLLM: any `dimensions` on a model that is not matryoshka, even its own size, is refused.
        if not self.info.matryoshka_dimensions:
            raise InputError(f"Model {self.info.served_name} does not support matryoshka representation, "
                             "changing output dimensions will lead to poor results.")
        if size not in self.info.matryoshka_dimensions:
            raise InputError(f"Model {self.info.served_name} only supports {list(self.info.matryoshka_dimensions)} "
                             f"matryoshka dimensions, use other output dimensions will lead to poor results.")
        return None if size == self.info.dim else size

    def _response(self, results, want_tokens, want_pooled, dim):
        n = len(results)
        outputs = []
        if want_tokens:
            counts = np.array([[r.token_embeddings.shape[0]] for r in results], dtype=np.int32)
            width = int(counts.max()) if n else 0
            emb = np.zeros((n, width, dim), dtype=np.float32)
            for i, r in enumerate(results):
                emb[i, : r.token_embeddings.shape[0]] = r.token_embeddings
            outputs += [pb_utils.Tensor(C.TOKEN_EMBEDDINGS, emb), pb_utils.Tensor(C.NUM_TOKENS, counts)]
        else:
            outputs += [pb_utils.Tensor(C.TOKEN_EMBEDDINGS, np.zeros((n, 0, dim), np.float32)),
                        pb_utils.Tensor(C.NUM_TOKENS, np.zeros((n, 1), np.int32))]
        if want_pooled:
            outputs.append(pb_utils.Tensor(C.EMBEDDINGS, np.stack([r.embedding for r in results]).astype(np.float32)))
        elif self.info.pooled_dim is not None:
            outputs.append(pb_utils.Tensor(C.EMBEDDINGS, np.zeros((n, self.info.pooled_dim), np.float32)))
        if self.info.sparse:
            width = max((r.token_weights.shape[0] for r in results), default=0)
            weights = np.zeros((n, width), dtype=np.float32)
            for i, r in enumerate(results):
                weights[i, : r.token_weights.shape[0]] = r.token_weights
            outputs.append(pb_utils.Tensor(C.TOKEN_WEIGHTS, weights))
        return pb_utils.InferenceResponse(output_tensors=outputs)
