"""Sentence-transformers bi-encoders (the default all-MiniLM-L6-v2): backbone -> pooling -> Dense* -> L2.

``embed`` pools over every prompt token (mean, or CLS where ``1_Pooling`` says so), as
sentence-transformers and vLLM do; ``token_embed`` returns each token's vector, L2-normalised.
"""

from __future__ import annotations

import torch

from .base import Encoder, ItemOutput, l2, to_numpy


class BiEncoder(Encoder):
    def head(self, hidden, attention, output, want_tokens, want_pooled, normalize) -> ItemOutput:
        tokens = pooled = None
        if want_tokens:
            t = self.projection(hidden[output])
            tokens = to_numpy(l2(t) if normalize else t)
        if want_pooled:
            mask = attention.to(hidden.dtype).unsqueeze(-1)
            if self.info.pooling == "cls":
                vec = hidden[0]
            else:
                vec = (hidden * mask).sum(0) / mask.sum().clamp(min=1.0)
            vec = self.projection(vec)
            pooled = to_numpy(l2(vec) if normalize else vec)
        return ItemOutput(token_embeddings=tokens, embedding=pooled)
