"""What the multimodal client and REST tests share: model cards of the image models, PNG images as data: URLs,
and ``RecordingClient``.

``RecordingClient`` is the real ``TrilateClient`` with its two Triton calls replaced: ``models`` returns the cards
given, and ``_infer`` records each Triton request (model, input arrays, requested outputs, parameters) and answers
with outputs computed from that request by the wire contract's rules (``prompt_tokens`` = 3 per text row plus
``IMAGE_TOKENS`` per image sent; a score is the length of the document row).  It tests what the client *sends*
(the request -> Triton-input conversion) and how it reads the answer; the image models themselves, and the
server's reading of these tensors, are tested through a real tritonserver once the server side serves them.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image
from python_backend_models import contract as C

from trilate import TrilateClient
from trilate import multimodal as MM
from trilate.types import ModelCard

IMAGE_TOKENS = 64  # what the fake answer counts per image (a server counts the expanded placeholder tokens)
TEXT_TOKENS = 3

COLQWEN = "TomoroAI/tomoro-colqwen3-embed-4b"
NEMOTRON_EMBED = "nvidia/llama-nemotron-embed-vl-1b-v2"
NEMOTRON_RERANK = "nvidia/llama-nemotron-rerank-vl-1b-v2"
COLBERT = "answerdotai/answerai-colbert-small-v1"


def card(served: str, triton: str, architecture: str, score_type: str, tasks: tuple[str, ...], dim: int,
         **extra: Any) -> ModelCard:
    """A card as the repository builder writes it (JSON in the ensemble's config), read back by the client."""
    data = {"served_name": served, "architecture": architecture, "score_type": score_type, "tasks": list(tasks),
            "dim": dim, "max_model_len": 4096, "has_pad_token": True, **extra}
    return ModelCard.from_parameter(triton, json.dumps(data))


CARDS = [
    card(COLQWEN, "colqwen", "ColQwen3", "late-interaction", ("token_embed",), 8, multimodal=True),
    card(NEMOTRON_EMBED, "nemotron_embed", "LlamaNemotronVLModel", "bi-encoder", ("embed", "token_embed"), 8,
         multimodal=True, prompts={"search_query": "query: ", "search_document": "passage: "}),
    card(NEMOTRON_RERANK, "nemotron_rerank", "LlamaNemotronVLForSequenceClassification", "cross-encoder",
         ("classify",), 1, multimodal=True),
    card(COLBERT, "colbert", "HF_ColBERT", "late-interaction", ("token_embed",), 8),  # a text model (no new fields)
]


def png(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def rows(array: np.ndarray) -> list[Any]:
    """A [n, 1] STRING tensor's rows: JSON objects decoded, plain texts as str."""
    out = []
    for (cell,) in array:
        text = cell.decode("utf-8")
        out.append(json.loads(text) if text.startswith("{") else text)
    return out


class RecordingClient(TrilateClient):
    def __init__(self, cards: list[ModelCard] = CARDS, **kwargs):
        super().__init__("127.0.0.1:1", **kwargs)  # a port nothing listens on: no call may leave this process
        self._fake_cards = {c.served_name: c for c in cards}
        self.calls: list[dict[str, Any]] = []

    def models(self, refresh: bool = False) -> list[ModelCard]:
        return list(self._fake_cards.values())

    def _infer(self, model, inputs, outputs, parameters=None):
        params = {k: v for k, v in (parameters or {}).items() if v is not None}
        self.calls.append({"model": model, "inputs": inputs, "outputs": list(outputs), "params": params})
        for name, array in inputs.items():  # what tritonclient needs: a BYTES tensor of bytes, 2-D
            if array.dtype != object or array.ndim != 2 or not all(isinstance(x, bytes) for x in array.reshape(-1)):
                raise AssertionError(f"{name}: not a 2-D BYTES tensor of bytes: {array!r}")

        def tokens(text_name: str, image_name: str) -> np.ndarray:
            n = inputs[text_name].shape[0]
            counts = np.full((n, 1), TEXT_TOKENS, dtype=np.int32)
            if image_name in inputs:
                counts[:, 0] += IMAGE_TOKENS * (inputs[image_name] != b"").sum(axis=1).astype(np.int32)
            return counts

        if model.endswith("__score"):
            n_docs = inputs[C.DOCUMENTS].shape[0]
            scores = np.array([float(len(cell)) for (cell,) in inputs[C.DOCUMENTS]], dtype=np.float32)
            q_tokens = tokens(C.QUERIES, MM.QUERY_IMAGES)
            d_tokens = tokens(C.DOCUMENTS, MM.DOCUMENT_IMAGES)
            card = next(c for c in self._fake_cards.values() if c.triton_name == model.split("__")[0])
            if card.cross_encoder:  # pair prompt tokens on the query side, zeros on the document side
                if inputs[C.QUERIES].shape[0] != n_docs:
                    raise AssertionError("a cross-encoder request must carry equal numbers of queries and documents")
                q_tokens, d_tokens = q_tokens + d_tokens, np.zeros_like(d_tokens)
            answer = {C.SCORES: scores, C.QUERY_PROMPT_TOKENS: q_tokens, C.DOCUMENT_PROMPT_TOKENS: d_tokens}
        else:
            n = inputs[C.TEXT].shape[0]
            dim = 8
            answer = {
                C.EMBEDDINGS: np.tile(np.arange(n, dtype=np.float32)[:, None], (1, dim)),
                C.TOKEN_EMBEDDINGS: np.ones((n, 2, dim), dtype=np.float32),
                C.NUM_TOKENS: np.full((n, 1), 2, dtype=np.int32),
                C.PROMPT_TOKENS: tokens(C.TEXT, MM.IMAGES),
            }
        return {name: answer[name] for name in outputs}
