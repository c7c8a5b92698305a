"""Shared scoring stages: MaxSim for every late-interaction pipeline, cosine for bi-encoders."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..scoring import cosine_batch, maxsim_batch
from .base import StageModel, input_array


class MaxSimModel(StageModel):
    def handle(self, request):
        scores = maxsim_batch(
            input_array(request, C.QUERY_EMBEDDINGS),
            input_array(request, C.QUERY_NUM_TOKENS),
            input_array(request, C.DOCUMENT_EMBEDDINGS),
            input_array(request, C.DOCUMENT_NUM_TOKENS),
        )
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(C.SCORES, scores)])


class CosineModel(StageModel):
    def handle(self, request):
        scores = cosine_batch(input_array(request, C.QUERY_EMBEDDINGS), input_array(request, C.DOCUMENT_EMBEDDINGS))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(C.SCORES, scores)])
