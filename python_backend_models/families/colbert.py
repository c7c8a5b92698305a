"""ColBERT late interaction: backbone -> projection (no bias) -> per-token L2.

Serves ``HF_ColBERT`` (BERT), ``ColBERTModernBertModel``, ``ColBERTJinaRobertaModel`` and
``ColBERTLfm2Model``: the backbone differs, the head is the same.  Which tokens come back is decided by the preprocess stage's output mask:
every token in vLLM's mode; PyLate's selection in the query/document modes.
"""

from __future__ import annotations

from .base import Encoder, ItemOutput, PackInputs, Wanted


class ColbertEncoder(Encoder):
    def heads(self, pack: PackInputs, wanted: Wanted) -> list[ItemOutput]:
        if wanted.pooled:
            raise ValueError("ColBERT models have no pooled embedding")
        if not wanted.tokens:
            return [ItemOutput(token_embeddings=None, embedding=None) for _ in pack.lengths]
        vectors = self.finish_rows(self.projection(pack.hidden), pack.normalize, pack.dimensions)
        return [ItemOutput(token_embeddings=v, embedding=None) for v in pack.selected(vectors)]
