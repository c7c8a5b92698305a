"""ColBERT late interaction: backbone -> projection (no bias) -> per-token L2.

Serves ``HF_ColBERT`` (BERT).  Which tokens come back is decided by the preprocess stage's output mask:
every token in vLLM's mode; PyLate's selection in the query/document modes.
"""

from __future__ import annotations

import torch

from .base import Encoder, ItemOutput, l2, to_numpy


class ColbertEncoder(Encoder):
    def head(self, hidden, attention, output, want_tokens, want_pooled, normalize) -> ItemOutput:
        if want_pooled:
            raise ValueError("ColBERT models have no pooled embedding")
        vectors = self.projection(hidden[output])
        if normalize:
            vectors = l2(vectors)
        return ItemOutput(token_embeddings=to_numpy(vectors), embedding=None)
