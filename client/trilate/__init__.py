"""trilate: vLLM's pooling models served from a Triton model repository.

This package is the client side: ``TrilateClient`` (score, rerank, pooling, embed, tokenize over
tritonclient HTTP or gRPC) and the ``trilate`` command.
"""

from .client import TrilateClient
from .errors import InvalidInputError, ModelNotFoundError, ServerUnavailableError, TrilateError, UnsupportedTaskError
from .types import (
    EmbeddingResult,
    ModelCard,
    PoolingResult,
    RerankResult,
    ScoreResult,
    SparseEmbedding,
    TokenizeResult,
    Usage,
)

__all__ = [
    "TrilateClient",
    "TrilateError",
    "InvalidInputError",
    "ModelNotFoundError",
    "ServerUnavailableError",
    "UnsupportedTaskError",
    "EmbeddingResult",
    "ModelCard",
    "PoolingResult",
    "RerankResult",
    "ScoreResult",
    "SparseEmbedding",
    "TokenizeResult",
    "Usage",
]
