"""ColBERT late interaction: backbone -> projection (no bias) -> per-token L2.

Serves ``HF_ColBERT`` (BERT), ``ColBERTModernBertModel``, ``ColBERTJinaRobertaModel`` and
``ColBERTLfm2Model``: the backbone differs, the head is the same.  Which tokens come back is decided by the preprocess stage's output mask:
every token in vLLM's mode; PyLate's selection in the query/document modes.
"""

from __future__ import annotations

from .base import Encoder, ItemOutput


class ColbertEncoder(Encoder):
    def head(self, hidden, attention, output, want_tokens, want_pooled, normalize, dimensions=None, ids=None) -> ItemOutput:
        if want_pooled:
            raise ValueError("ColBERT models have no pooled embedding")
        return ItemOutput(token_embeddings=self.finish(self.projection(hidden[output]), normalize, dimensions),
                          embedding=None)
