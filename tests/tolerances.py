"""How far two fp32 answers to the same question may differ when they ran in different dynamic batches.

A score or rerank request is one ensemble request that sends its query side and its document side to the
encoder as two requests; whether those (and any concurrent requests) meet in one dynamic batch depends on
timing.  The encoder packs a batch's texts into padded forward passes, and a pack's width changes how the
CPU kernels block the attention and matmul sums: each fp32 hidden value moves by a few ulps per layer, and
a score sums up to query-tokens x dim products of them.  Observed on this machine: 1.9e-6 relative, 6e-7
absolute (BGE-M3 hybrid scores, REST against the client library).

The bounds below are ten times that, and still far below any real difference: another encoding mode, a
dropped or extra token, a missing normalisation or the wrong pairing moves scores and vector values by more
than 1e-3.  Comparisons with an independent reference (HF transformers, PyLate, FlagEmbedding) keep their
own, larger tolerances.
"""

SCORE_RTOL = 2e-5  # relative, for pytest.approx(..., rel=SCORE_RTOL, abs=SCORE_ATOL)
SCORE_ATOL = 2e-6  # absolute, for scores near zero (sparse scores, cosines of unrelated texts)
VECTOR_ATOL = 1e-5  # vector elements (unit vectors: |x| <= 1)
