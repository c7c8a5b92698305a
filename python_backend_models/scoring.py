"""Score functions over already-computed vectors (numpy, fp32).  Pure; no server needed.

Pairing is vLLM's: one query against N documents (1:1 and 1:N), or N queries zipped with N documents
(N:N).  Never a cross product.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


class PairingError(InputError):
    pass


def pair_indices(n_queries: int, n_documents: int) -> list[tuple[int, int]]:
    if n_queries == 0:
        raise PairingError("At least one text element must be given")
    if n_documents == 0:
        raise PairingError("At least one text_pair element must be given")
    if n_queries == 1:
        return [(0, j) for j in range(n_documents)]
    if n_queries == n_documents:
        return [(i, i) for i in range(n_documents)]
    raise PairingError("Input lengths must be either 1:1, 1:N or N:N")


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """Late interaction: sum over query tokens of the best dot product with any document token.

    query (q_tokens, dim), document (d_tokens, dim); fp32; no normalisation by query length.
    """
    if query.shape[0] == 0 or document.shape[0] == 0:
        return 0.0
    sims = np.asarray(query, dtype=np.float32) @ np.asarray(document, dtype=np.float32).T
    return float(sims.max(axis=1).sum(dtype=np.float32))


def maxsim_batch(q_emb: np.ndarray, q_n: np.ndarray, d_emb: np.ndarray, d_n: np.ndarray) -> np.ndarray:
    """Scores for padded batches: q_emb (Nq, Tq, D) with q_n (Nq,) real rows; same for documents.

    One batched matmul for all pairs: (pairs, Tq, Td) similarities, padded document tokens masked out
    before the max, padded query tokens before the sum.  Returns (n_pairs,) float32 in document order.
    """
    q_n = np.asarray(q_n).reshape(-1).astype(np.int64)
    d_n = np.asarray(d_n).reshape(-1).astype(np.int64)
    pairs = pair_indices(len(q_n), len(d_n))
    tq, td = int(q_n.max(initial=0)), int(d_n.max(initial=0))
    if tq == 0 or td == 0:
        return np.zeros(len(pairs), dtype=np.float32)
    q = np.asarray(q_emb[:, :tq], dtype=np.float32)  # (Nq, tq, D)
    d = np.asarray(d_emb[:, :td], dtype=np.float32)  # (Nd, td, D)
    if len(q_n) == 1:
        sims = np.matmul(d, q[0].T).transpose(0, 2, 1)  # (Nd, tq, td)
        q_live = np.broadcast_to(np.arange(tq) < q_n[0], (len(d_n), tq))
    else:
        sims = np.matmul(q, d.transpose(0, 2, 1))  # (N, tq, td), zipped pairs
        q_live = np.arange(tq)[None, :] < q_n[:, None]
    d_live = np.arange(td)[None, :] < d_n[:, None]  # (Nd, td)
    sims = np.where(d_live[:, None, :], sims, -np.inf)
    best = sims.max(axis=2)  # (pairs, tq); -inf where the document has no tokens
    best = np.where(q_live & np.isfinite(best), best, 0.0).astype(np.float32)
    return best.sum(axis=1, dtype=np.float32)


def cosine_batch(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Cosine similarity of pooled vectors: q (Nq, D), d (Nd, D) -> (n_pairs,) float32."""
    pairs = pair_indices(q.shape[0], d.shape[0])
    q = np.asarray(q, dtype=np.float32)
    d = np.asarray(d, dtype=np.float32)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    dn = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return np.array([float(qn[i] @ dn[j]) for i, j in pairs], dtype=np.float32)
