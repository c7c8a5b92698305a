"""BGE-M3 (``BgeM3EmbeddingModel``): one XLM-RoBERTa forward pass, three heads.

* dense: the first token's hidden state (CLS / ``<s>``), L2-normalised — ``embedding``;
* multi-vector: ``colbert_linear`` (with bias) on every position but the first (BOS), L2 —
  ``token_embeddings``, n - 1 rows (EOS kept, as FlagEmbedding and vLLM do);
* sparse: ``relu(sparse_linear(h))`` per position — ``token_weights``, aligned with the input ids
  (trimming and per-id aggregation are the sparse stage's job, ``python_backend_models.sparse``).

Heads load from ``colbert_linear.pt`` / ``sparse_linear.pt`` with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, load_torch_state_dict
from .base import Encoder, ItemOutput, PackInputs, Wanted, to_numpy


def _linear(path: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    file = path / f"{name}.pt"
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {name}.pt; BgeM3EmbeddingModel needs colbert_linear.pt and sparse_linear.pt beside "
            "the backbone (as BAAI/bge-m3 ships them)"
        )
    state = load_torch_state_dict(file)
    return state["weight"].float(), state["bias"].float()


class BgeM3Encoder(Encoder):
    def __init__(self, info, device: str = "cpu", dtype: str = "auto", max_batch_tokens: int = 16384):
        super().__init__(info, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)
        path = Path(info.path)
        self.colbert_w, self.colbert_b = (t.to(self.device) for t in _linear(path, "colbert_linear"))
        self.sparse_w, self.sparse_b = (t.to(self.device) for t in _linear(path, "sparse_linear"))
        self.bos = info.bos_token_id

    def heads(self, pack: PackInputs, wanted: Wanted) -> list[ItemOutput]:
        rows = len(pack.lengths)
        tokens: list = [None] * rows
        pooled: list = [None] * rows
        weights: list = [None] * rows
        if wanted.tokens:
            vectors = self.finish_rows(F.linear(pack.hidden, self.colbert_w, self.colbert_b), pack.normalize,
                                       pack.dimensions)
            # vLLM drops the first row only when it is BOS (it is, unless add_special_tokens is off).
            first = (pack.ids[:, 0] == self.bos).tolist()
            tokens = [v[(1 if first[r] and n else 0):n] for r, (v, n) in enumerate(zip(vectors, pack.lengths))]
        if wanted.pooled:
            pooled = self.finish_rows(pack.hidden[:, 0], pack.normalize, pack.dimensions)
        if wanted.sparse:
            raw = F.linear(pack.hidden, self.sparse_w, self.sparse_b).squeeze(-1)  # (rows, width)
            relu = torch.tensor(pack.normalize, device=raw.device).unsqueeze(-1)
            values = to_numpy(torch.where(relu, torch.relu(raw), raw))
            weights = [values[r, :n] for r, n in enumerate(pack.lengths)]
        return [ItemOutput(token_embeddings=t, embedding=p, token_weights=w) for t, p, w in zip(tokens, pooled, weights)]
