"""BGE-M3's sparse (lexical) weights and its three scores.  Pure numpy; no server needed.

Two views of the same per-position weights ``relu(sparse_linear(h))``:

* vLLM's ``token_classify``: one weight per prompt position, the first dropped when it is BOS and the
  last when it is EOS (``vllm_span``);
* FlagEmbedding's lexical weights: per token id the maximum weight, special ids (CLS, EOS, PAD, UNK)
  and weights <= 0 dropped (``aggregate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


def vllm_span(ids: np.ndarray, n: int, bos: int | None, eos: int | None) -> tuple[int, int]:
    """Positions [start, stop) vLLM returns for ``token_classify`` on a prompt of ``n`` ids."""
    start = 1 if n and bos is not None and int(ids[0]) == bos else 0
    stop = n - 1 if n > start and eos is not None and int(ids[n - 1]) == eos else n
    return start, stop


@dataclass
class Lexical:
    """One text's lexical weights, in order of first occurrence: token ids, weights (float32)."""

    ids: np.ndarray
    weights: np.ndarray

    def as_dict(self) -> dict[int, float]:
        return {int(i): float(w) for i, w in zip(self.ids, self.weights)}


def aggregate(ids: np.ndarray, weights: np.ndarray, skip_ids: set[int]) -> Lexical:
    """FlagEmbedding's rule: max weight per token id, skipping special ids and weights <= 0."""
    best: dict[int, float] = {}
    for tid, w in zip(ids.tolist(), np.asarray(weights, dtype=np.float32).tolist()):
        if tid in skip_ids or w <= 0:
            continue
        if tid not in best or w > best[tid]:
            best[tid] = w
    return Lexical(np.array(list(best), dtype=np.int64), np.array(list(best.values()), dtype=np.float32))


def lexical_score(a: Lexical, b: Lexical) -> float:
    """Sum over token ids present in both of w_a * w_b (FlagEmbedding's lexical matching score)."""
    da, db = a.as_dict(), b.as_dict()
    return float(sum(np.float32(w) * np.float32(db[t]) for t, w in da.items() if t in db))


def colbert_mean_score(q: np.ndarray, d: np.ndarray) -> float:
    """FlagEmbedding's ColBERT score: MaxSim summed over query vectors, divided by their number."""
    if q.shape[0] == 0 or d.shape[0] == 0:
        return 0.0
    sims = np.asarray(q, np.float32) @ np.asarray(d, np.float32).T
    return float(sims.max(axis=1).sum(dtype=np.float32) / np.float32(q.shape[0]))


SCORE_MODES = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")


def hybrid(dense: float, sparse: float, colbert: float, mode: str, weights: tuple[float, float, float]) -> float:
    """FlagEmbedding ``compute_score``'s combinations; weights are (dense, sparse, colbert)."""
    wd, ws, wc = weights
    if mode == "dense":
        return dense
    if mode == "sparse":
        return sparse
    if mode == "colbert":
        return colbert
    if mode == "sparse+dense":
        return (ws * sparse + wd * dense) / (ws + wd)
    if mode == "colbert+sparse+dense":
        return (wc * colbert + ws * sparse + wd * dense) / (wc + ws + wd)
    raise InputError(f"score_mode must be one of {list(SCORE_MODES)}, got {mode!r}")


def parse_weights(value) -> tuple[float, float, float]:
    if value is None or value == "":
        return (1.0, 1.0, 1.0)
    if isinstance(value, str):
        parts = [p for p in value.replace("[", "").replace("]", "").split(",") if p.strip()]
    else:
        parts = list(value)
    try:
        weights = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"score_weights must be three numbers (dense, sparse, colbert), got {value!r}") from None
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) == 0:
        raise InputError(f"score_weights must be three non-negative numbers (dense, sparse, colbert), got {value!r}")
    return weights  # type: ignore[return-value]
