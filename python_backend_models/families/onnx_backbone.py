"""ONNX Runtime for the BERT text backbones on CPU: the loaded transformers model's own weights, traced at
start-up into a graph that runs on the live tokens only, held in memory (no file), run by ONNX Runtime.

Why: a pack of texts of mixed lengths is padded to its longest; :class:`_PackedBert` instead runs the
embeddings, every projection and the feed-forward layers on the ``(N, H)`` matrix of a pack's N real tokens
(one large matrix product a layer, no padding) and pads only the per-row attention scores.  ONNX Runtime fuses
the rest (layer norms, GELU, biases).  Measured on this 2-core CPU, the bench's texts in the packs the server
makes of 8 or 32 texts, tokens/s of the backbone alone (two runs each): all-MiniLM-L6-v2 PyTorch 5,560-6,000,
ONNX Runtime on padded packs 5,400-6,800, this graph 6,380-6,930; a BERT 384 x 12 2,040-2,800, 2,930-3,240
and 3,280-3,440.

The graph is the same arithmetic as BERT's eager attention in another summation order.  The start-up check
compares it with the PyTorch backbone on padded and unpadded probes and keeps PyTorch (with a warning) when
they differ by more than :data:`TOLERANCE` (or, for weights that sensitive, :data:`SPREAD_FACTOR` times what
PyTorch's own two attention kernels differ by).  Tracing leaves the PyTorch module giving wrong answers
(measured: off by 4 on hidden states of size 4), so a caller that falls back loads the backbone again.

Only ``model_type`` in :data:`BACKBONES` with absolute positions, fp32, CPU: elsewhere PyTorch runs (bf16 /
fp16 and GPUs have their own fast paths; other backbones are not traced here).
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Sequence

import numpy as np
import torch

from ..repository import ENCODER_BACKENDS as BACKENDS

log = logging.getLogger(__name__)

BACKBONES = ("bert",)
# Largest |difference| of last hidden states between ONNX Runtime and PyTorch accepted at start-up: this, or
# SPREAD_FACTOR times the difference between PyTorch's own eager and SDPA attention on the same weights, whichever is
# larger (some weights are that sensitive to summation order: a random BERT 384 x 12 moves by 7e-5 between PyTorch's
# two kernels, by 1.5e-4 under ONNX Runtime; all-MiniLM-L6-v2's real weights by 4e-6 under ONNX Runtime).
TOLERANCE = 1e-4
SPREAD_FACTOR = 4.0


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot run this backbone here (not installed, export failed, or the check failed)."""


class _PackedBert(torch.nn.Module):
    """transformers' ``BertModel`` on the live tokens of a pack only (its own weights, not a copy).

    Inputs: ``input_ids`` and ``position_ids`` ``(N,)`` of the N live tokens, row after row; ``gather`` ``(R, W)``
    the flat index of each row's token at each position (0 past a row's end); ``key_mask`` ``(R, W)`` the
    attention mask (1: attended); ``scatter`` ``(N,)`` each live token's flat position in ``R * W``.  The
    embeddings, every projection and the feed-forward layers run on ``(N, H)``, with no padding; only the
    attention scores are per row, padded to ``W``, with padded keys masked as transformers masks them.  Same
    arithmetic as BERT's eager attention (post-norm layers, the ``gelu`` of the config).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.embeddings = model.embeddings
        self.layers = model.encoder.layer
        self.heads = model.config.num_attention_heads
        self.head_dim = model.config.hidden_size // self.heads

    def forward(self, input_ids, position_ids, gather, key_mask, scatter):
        e = self.embeddings
        x = e.word_embeddings(input_ids) + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x + e.position_embeddings(position_ids))
        rows, width = gather.shape[0], gather.shape[1]
        bias = (1.0 - key_mask.to(x.dtype))[:, None, None, :] * torch.finfo(x.dtype).min
        scale = self.head_dim ** -0.5
        for layer in self.layers:
            attention = layer.attention.self

            def per_row(t):
                return t[gather].view(rows, width, self.heads, self.head_dim).transpose(1, 2)

            q, k, v = per_row(attention.query(x)), per_row(attention.key(x)), per_row(attention.value(x))
            probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * scale + bias, dim=-1)
            context = torch.matmul(probs, v).transpose(1, 2).reshape(rows * width, self.heads * self.head_dim)[scatter]
            x = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + x)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(inner) + x)
        return x


def packed_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """:class:`_PackedBert`'s inputs for a padded ``(R, W)`` pack whose row ``r`` holds ``lengths[r]`` tokens."""
    rows, width = input_ids.shape
    positions = np.broadcast_to(np.arange(width, dtype=np.int64), (rows, width))
    live = positions < np.asarray(lengths, dtype=np.int64)[:, None]
    gather = np.zeros((rows, width), dtype=np.int64)
    gather[live] = np.arange(int(live.sum()), dtype=np.int64)
    return {"input_ids": np.ascontiguousarray(input_ids[live], dtype=np.int64), "position_ids": positions[live],
            "gather": gather, "key_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "scatter": np.flatnonzero(live).astype(np.int64)}


def _lengths(attention: np.ndarray) -> np.ndarray:
    """Each row's length when its attention mask alone says where it ends."""
    return np.array([int(np.flatnonzero(row)[-1]) + 1 for row in attention], dtype=np.int64)


def _probes(vocab: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shapes the exported graph must handle as PyTorch does: padded rows, one row, one token, a full mask."""
    rng = np.random.default_rng(0)
    out = []
    for rows, width, padded in ((3, 17, True), (1, 1, False), (2, 40, False), (5, 9, True)):
        ids = rng.integers(0, vocab, size=(rows, width), dtype=np.int64)
        att = np.ones((rows, width), dtype=np.int64)
        if padded:
            for r in range(1, rows):
                att[r, width - r * 2:] = 0
                ids[r, width - r * 2:] = 0
        out.append((ids, att))
    return out


class OnnxBackbone:
    """Callable ``(input_ids, attention_mask) -> last hidden states (rows, width, H) fp32`` on ONNX Runtime."""

    def __init__(self, model: torch.nn.Module, threads: int, vocab_size: int):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # the pinned environment has it; a bare install may not
            raise OnnxUnavailable(f"onnxruntime is not installed ({exc})") from exc
        probes = _probes(vocab_size)
        expected = self._hidden(model, probes)
        attention = getattr(model.config, "_attn_implementation", None)
        spread = 0.0
        if attention is not None and attention != "eager":
            # How far PyTorch's own two attention kernels disagree on these weights: the yardstick for ours.
            model.set_attn_implementation("eager")
            spread = max(self._difference(a, b, att) for a, b, (_, att) in zip(self._hidden(model, probes), expected, probes))
            model.set_attn_implementation(attention)
        self.tolerance = max(TOLERANCE, SPREAD_FACTOR * spread)
        buffer = io.BytesIO()
        example = packed_inputs(*probes[0], _lengths(probes[0][1]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
                torch.onnx.export(
                    _PackedBert(model), tuple(torch.from_numpy(x) for x in example.values()), buffer, dynamo=False,
                    opset_version=17, input_names=list(example), output_names=["hidden"],
                    dynamic_axes={"input_ids": {0: "tokens"}, "position_ids": {0: "tokens"}, "scatter": {0: "tokens"},
                                  "gather": {0: "rows", 1: "width"}, "key_mask": {0: "rows", 1: "width"},
                                  "hidden": {0: "tokens"}},
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: run PyTorch
            raise OnnxUnavailable(f"export failed: {type(exc).__name__}: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Workers sleep between runs instead of spinning: the tokeniser stage, Triton and the front end share
        # these cores, and spinning workers took their time (measured in the server: 12-24 % fewer tokens/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        worst = max(self._difference(self.run(ids, att, _lengths(att)), want, att)
                    for (ids, att), want in zip(probes, expected))
        if not worst <= self.tolerance:
            raise OnnxUnavailable(f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {self.tolerance:.1e})")
        self.max_difference = worst

    @staticmethod
    def _hidden(model: torch.nn.Module, probes) -> list[np.ndarray]:
        with torch.inference_mode():
            return [model(input_ids=torch.from_numpy(i), attention_mask=torch.from_numpy(a)).last_hidden_state
                    .float().numpy() for i, a in probes]

    @staticmethod
    def _difference(got: np.ndarray, want: np.ndarray, attention: np.ndarray) -> float:
        live = attention.astype(bool)
        return float(np.abs(got[live] - want[live]).max())

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """Last hidden states ``(R, W, H)`` of a padded pack, zero past each row's ``lengths[r]`` tokens."""
        inputs = packed_inputs(input_ids, attention_mask, np.asarray(lengths))
        flat = self.session.run(None, inputs)[0]
        rows, width = input_ids.shape
        hidden = np.zeros((rows * width, flat.shape[-1]), dtype=np.float32)
        hidden[inputs["scatter"]] = flat
        return hidden.reshape(rows, width, -1)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.run(input_ids.numpy(), attention_mask.numpy(), lengths))


def wants_onnx(backend: str, backbone: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``backend`` (one of :data:`BACKENDS`) asks for ONNX Runtime on this backbone; ``onnx`` where it
    cannot run is an error naming why."""
    if backend not in BACKENDS:
        raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    fits = backbone in BACKBONES and device.type == "cpu" and dtype == torch.float32
    if backend == "onnx" and not fits:
        raise ValueError(f"the onnx encoder backend runs {', '.join(BACKBONES)} backbones in float32 on CPU; "
                         f"this one is {backbone!r}, {str(dtype).removeprefix('torch.')} on {device.type}")
    return backend != "torch" and fits

