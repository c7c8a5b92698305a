"""BGE-M3's sparse stage: per-position weights -> vLLM's token_classify list and FlagEmbedding's
lexical weights (max per token id, with the token strings; no torch in this process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..sparse import aggregate, vllm_span
from ..tokenization import TextPreprocessor
from .base import StageModel, input_array


class SparseModel(StageModel):
    def setup(self) -> None:
        self.info = self.model_info()
        core = TextPreprocessor(Path(self.info.path), self.info.max_model_len)
        self.tokenizer = core.tokenizer
        special = core.special
        # FlagEmbedding skips these ids (the mask token is not among them).
        self.skip = {t for t in (special.cls, special.eos, special.pad, special.unk) if t is not None}

    def handle(self, request):
        ids = input_array(request, C.INPUT_IDS)
        attention = input_array(request, C.ATTENTION_MASK)
        weights = input_array(request, C.TOKEN_WEIGHTS)
        n = ids.shape[0]
        if weights.shape[-1] == 0 and ids.shape[-1] > 0:
            # The encoder skipped the sparse head (the request's outputs or score_mode did not need it).
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(C.SPARSE_WEIGHTS, np.zeros((n, 0), np.float32)),
                pb_utils.Tensor(C.NUM_SPARSE_WEIGHTS, np.zeros((n, 1), np.int32)),
                pb_utils.Tensor(C.LEXICAL_IDS, np.zeros((n, 0), np.int64)),
                pb_utils.Tensor(C.LEXICAL_WEIGHTS, np.zeros((n, 0), np.float32)),
                pb_utils.Tensor(C.LEXICAL_TOKENS, np.zeros((n, 0), dtype=object)),
                pb_utils.Tensor(C.NUM_LEXICAL, np.zeros((n, 1), np.int32)),
            ])
        spans, lexicals = [], []
        for i in range(n):
            length = int(attention[i].sum())
            spans.append(vllm_span(ids[i], length, self.info.bos_token_id, self.info.eos_token_id))
            lexicals.append(aggregate(ids[i, :length], weights[i, :length], self.skip))
        width = max((b - a for a, b in spans), default=0)
        sparse = np.zeros((n, width), np.float32)
        for i, (a, b) in enumerate(spans):
            sparse[i, : b - a] = weights[i, a:b]
        k = max((len(x.ids) for x in lexicals), default=0)
        lex_ids = np.zeros((n, k), np.int64)
        lex_w = np.zeros((n, k), np.float32)
        lex_tok = np.full((n, k), b"", dtype=object)
        for i, lex in enumerate(lexicals):
            m = len(lex.ids)
            lex_ids[i, :m] = lex.ids
            lex_w[i, :m] = lex.weights
            lex_tok[i, :m] = [(self.tokenizer.id_to_token(int(t)) or "").encode("utf-8") for t in lex.ids]
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(C.SPARSE_WEIGHTS, sparse),
            pb_utils.Tensor(C.NUM_SPARSE_WEIGHTS, np.array([[b - a] for a, b in spans], np.int32)),
            pb_utils.Tensor(C.LEXICAL_IDS, lex_ids),
            pb_utils.Tensor(C.LEXICAL_WEIGHTS, lex_w),
            pb_utils.Tensor(C.LEXICAL_TOKENS, lex_tok),
            pb_utils.Tensor(C.NUM_LEXICAL, np.array([[len(x.ids)] for x in lexicals], np.int32)),
        ])
