"""What every stage knows about one served model (its *card*), read from JSON and safetensors headers only.

The registry (``registry.describe``) writes a card per served model into each stage's config; the stages,
the ensembles' ``trilate_model_card`` parameter and the client library read it back (``ModelInfo.from_json``).
No torch here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

LATE_INTERACTION = "late-interaction"
BI_ENCODER = "bi-encoder"
CROSS_ENCODER = "cross-encoder"


@dataclass(frozen=True)
class DenseLayer:
    """One projection layer: ``weight`` is (out, in); where its tensors live."""

    file: str  # path relative to the checkpoint
    weight_key: str
    bias_key: str | None
    in_features: int
    out_features: int
    activation: str  # "identity" | "tanh"


@dataclass(frozen=True)
class ModelInfo:
    """What the builder, the stages and the client need to know about one served model."""

    served_name: str
    path: str
    architecture: str
    family: str
    backbone: str
    score_type: str
    tasks: tuple[str, ...]
    dim: int
    hidden_size: int
    max_model_len: int
    do_lower_case: bool
    pooling: str  # "mean" | "cls": pooled vector of bi-encoders
    projection: tuple[DenseLayer, ...] = ()
    embedding_modes: bool = False  # ColBERT query/document conventions available
    has_pad_token: bool = True  # vLLM's score usage adds one token per pair when the tokenizer has one
    matryoshka_dimensions: tuple[int, ...] = ()  # `dimensions` a request may ask for
    pooled_dim: int | None = None  # size of the pooled vector (None: the model has none)
    sparse: bool = False  # per-position sparse weights (BGE-M3)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    # Cohere input_type -> text prefix (config.json task_instructions, else sentence-transformers prompts)
    prompts: dict[str, str] = field(default_factory=dict)
    multimodal: bool = False  # image inputs accepted (the `images` tensor, prompt_format json)
    # What only one family reads (e.g. ColQwen's weight layout, Nemotron's tiling): JSON values.
    family_config: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None  # --chat-template file, else the family's or the tokenizer's own

    @property
    def cross_encoder(self) -> bool:
        """Query and document go through the model together (scores, not vectors)."""
        return self.score_type == CROSS_ENCODER

    @property
    def pooled(self) -> bool:
        """The encoder also returns one pooled vector per text."""
        return self.pooled_dim is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def resolved(self, repository_root: str | Path) -> "ModelInfo":
        """This card with a relative checkpoint ``path`` (as a built repository stores it) made absolute
        against the repository it was read from."""
        path = Path(self.path)
        if path.is_absolute():
            return self
        return replace(self, path=str((Path(repository_root) / path).resolve()))

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        data = json.loads(text)
        data.pop("pooled", None)  # cards written before it became derived
        data["tasks"] = tuple(data["tasks"])
        data["matryoshka_dimensions"] = tuple(data.get("matryoshka_dimensions", ()))
        data["projection"] = tuple(DenseLayer(**layer) for layer in data["projection"])
        return cls(**data)


def safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors header alone."""
    with open(file, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
