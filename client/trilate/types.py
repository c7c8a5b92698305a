"""Typed results of the client library.  Vectors are numpy arrays; field names follow vLLM's JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelCard:
    """What the server says about one served model (from its ensemble's config)."""

    served_name: str
    triton_name: str
    architecture: str
    score_type: str  # "late-interaction" | "bi-encoder" | "cross-encoder"
    tasks: tuple[str, ...]
    dim: int
    max_model_len: int
    embedding_modes: bool
    has_pad_token: bool
    matryoshka_dimensions: tuple[int, ...] = ()
    multimodal: bool = False  # image inputs accepted (vl_wire.md: prompt_format=json rows + images tensors)
    # Cohere input_type -> text prefix; left out of the hash so that a card stays hashable
    prompts: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def cross_encoder(self) -> bool:
        """/score and /rerank send expanded (query, document) pairs to ``<m>__score``; no /pooling."""
        return self.score_type == "cross-encoder"

    @classmethod
    def from_parameter(cls, triton_name: str, text: str) -> "ModelCard":
        data = json.loads(text)
        return cls(
            served_name=data["served_name"],
            triton_name=triton_name,
            architecture=data["architecture"],
            score_type=data["score_type"],
            tasks=tuple(data["tasks"]),
            dim=int(data["dim"]),
            max_model_len=int(data["max_model_len"]),
            embedding_modes=bool(data.get("embedding_modes", False)),
            has_pad_token=bool(data.get("has_pad_token", True)),
            matryoshka_dimensions=tuple(data.get("matryoshka_dimensions", ())),
            multimodal=bool(data.get("multimodal", False)),
            prompts=dict(data.get("prompts") or {}),
        )


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": self.total_tokens,
                "completion_tokens": self.completion_tokens, "prompt_tokens_details": None}


@dataclass(frozen=True)
class PoolingItem:
    index: int
    data: np.ndarray  # token_embed: (n_tokens, dim); embed: (dim,)
    prompt_tokens: int = 0  # tokens of this input fed to the model


@dataclass(frozen=True)
class PoolingResult:
    model: str
    task: str
    data: list[PoolingItem]
    usage: Usage


@dataclass(frozen=True)
class EmbeddingItem:
    index: int
    embedding: np.ndarray  # (dim,)


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    data: list[EmbeddingItem]
    usage: Usage

    def matrix(self) -> np.ndarray:
        """(n_inputs, dim)"""
        return np.stack([item.embedding for item in self.data])


@dataclass(frozen=True)
class ScoreItem:
    index: int
    score: float


@dataclass(frozen=True)
class ScoreResult:
    model: str
    data: list[ScoreItem]  # in pair order, not sorted
    usage: Usage

    @property
    def scores(self) -> list[float]:
        return [item.score for item in self.data]


@dataclass(frozen=True)
class RerankDocument:
    text: str | None
    multi_modal: list[Any] | None = None


@dataclass(frozen=True)
class RerankItem:
    index: int  # position of the document in the request
    document: RerankDocument
    relevance_score: float


@dataclass(frozen=True)
class RerankResult:
    model: str
    results: list[RerankItem]  # best first, cut to top_n
    usage: Usage


@dataclass(frozen=True)
class SparseEmbedding:
    """Lexical weights of one text: parallel lists, in order of first occurrence."""

    token_ids: list[int]
    weights: list[float]
    tokens: list[str]

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.token_ids, self.weights))


@dataclass(frozen=True)
class TokenizeResult:
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = field(default=None)
