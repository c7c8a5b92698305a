"""Shared scoring stages: MaxSim for every late-interaction pipeline, cosine for bi-encoders, and
BGE-M3's dense / lexical / ColBERT / hybrid scores."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..scoring import cosine_batch, maxsim_batch, pair_indices
from ..sparse import Lexical, colbert_mean_score, hybrid, lexical_score, parse_weights
from .base import StageModel, input_array, request_parameters


def _scores(values) -> object:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(C.SCORES, np.asarray(values, np.float32))])


class MaxSimModel(StageModel):
    def handle(self, request):
        return _scores(maxsim_batch(
            input_array(request, C.QUERY_TOKEN_EMBEDDINGS),
            input_array(request, C.QUERY_NUM_TOKENS),
            input_array(request, C.DOCUMENT_TOKEN_EMBEDDINGS),
            input_array(request, C.DOCUMENT_NUM_TOKENS),
        ))


class CosineModel(StageModel):
    def handle(self, request):
        return _scores(cosine_batch(input_array(request, C.QUERY_EMBEDDINGS), input_array(request, C.DOCUMENT_EMBEDDINGS)))


class M3ScoreModel(StageModel):
    """Request parameters ``score_mode`` (default "dense": vLLM's cosine of dense vectors) and
    ``score_weights`` ("dense,sparse,colbert", default 1,1,1), as FlagEmbedding's ``compute_score``."""

    def handle(self, request):
        params = request_parameters(request)
        mode = params.get(C.PARAM_SCORE_MODE) or "dense"
        weights = parse_weights(params.get(C.PARAM_SCORE_WEIGHTS))
        side = {s: {n: input_array(request, f"{s}_{n}") for n in (
            C.EMBEDDINGS, C.TOKEN_EMBEDDINGS, C.NUM_TOKENS, C.LEXICAL_IDS, C.LEXICAL_WEIGHTS, C.NUM_LEXICAL)}
            for s in ("query", "document")}
        q, d = side["query"], side["document"]
        dense = cosine_batch(q[C.EMBEDDINGS], d[C.EMBEDDINGS])

        def lexical(s, i):
            k = int(s[C.NUM_LEXICAL][i, 0])
            return Lexical(s[C.LEXICAL_IDS][i, :k], s[C.LEXICAL_WEIGHTS][i, :k])

        def vectors(s, i):
            return s[C.TOKEN_EMBEDDINGS][i, : int(s[C.NUM_TOKENS][i, 0])]

        scores = []
        for p, (i, j) in enumerate(pair_indices(q[C.EMBEDDINGS].shape[0], d[C.EMBEDDINGS].shape[0])):
            sparse = lexical_score(lexical(q, i), lexical(d, j)) if mode != "dense" else 0.0
            colbert = colbert_mean_score(vectors(q, i), vectors(d, j)) if "colbert" in mode else 0.0
            scores.append(hybrid(float(dense[p]), sparse, colbert, mode, weights))
        return _scores(scores)
