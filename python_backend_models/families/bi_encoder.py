"""Sentence-transformers bi-encoders (the default all-MiniLM-L6-v2): backbone -> pooling -> Dense* -> L2.

``embed`` pools over every prompt token (mean, or CLS where ``1_Pooling`` says so), as
sentence-transformers and vLLM do; ``token_embed`` returns each token's vector, L2-normalised.
"""

from __future__ import annotations

from .base import Encoder, ItemOutput


class BiEncoder(Encoder):
    def head(self, hidden, attention, output, want_tokens, want_pooled, normalize, dimensions=None, ids=None) -> ItemOutput:
        tokens = pooled = None
        if want_tokens:
            tokens = self.finish(self.projection(hidden[output]), normalize, dimensions)
        if want_pooled:
            mask = attention.to(hidden.dtype).unsqueeze(-1)
            if self.info.pooling == "cls":
                vec = hidden[0]
            else:
                vec = (hidden * mask).sum(0) / mask.sum().clamp(min=1.0)
            pooled = self.finish(self.projection(vec), normalize, dimensions)
        return ItemOutput(token_embeddings=tokens, embedding=pooled)
