"""Sentence-transformers bi-encoders (the default all-MiniLM-L6-v2): backbone -> pooling -> Dense* -> L2.

``embed`` pools over every prompt token (mean, or CLS where ``1_Pooling`` says so), as
sentence-transformers and vLLM do; ``token_embed`` returns each token's vector, L2-normalised.
"""

from __future__ import annotations

from .base import Encoder, ItemOutput, PackInputs, Wanted


class BiEncoder(Encoder):
    def heads(self, pack: PackInputs, wanted: Wanted) -> list[ItemOutput]:
        rows = len(pack.lengths)
        tokens: list = [None] * rows
        pooled: list = [None] * rows
        if wanted.tokens:
            vectors = self.finish_rows(self.projection(pack.hidden), pack.normalize, pack.dimensions)
            tokens = pack.selected(vectors)
        if wanted.pooled:
            if self.info.pooling == "cls":
                vec = pack.hidden[:, 0]
            else:
                mask = pack.attention.to(pack.hidden.dtype).unsqueeze(-1)  # (rows, width, 1)
                vec = (pack.hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = self.finish_rows(self.projection(vec), pack.normalize, pack.dimensions)
        return [ItemOutput(token_embeddings=t, embedding=p) for t, p in zip(tokens, pooled)]
