"""ONNX Runtime for the BERT-family text backbones on CPU: the same weights, exported from the loaded
transformers model at start-up, held in memory (no file), run by ONNX Runtime's fused CPU kernels.

Why: on the CPUs we measured, ONNX Runtime runs a BERT forward pass about a third faster than PyTorch eager
at the batch shapes packing makes (``make bench``; README, Performance).  The exported graph is traced from
transformers' eager attention, so it is the same arithmetic in another summation order: the start-up check
below compares it with the PyTorch backbone on padded and unpadded probes and keeps PyTorch (with a warning)
when they differ by more than :data:`TOLERANCE` (or, for weights that sensitive, :data:`SPREAD_FACTOR` times
what PyTorch's own two attention kernels differ by).  The exporter leaves the PyTorch module it traced giving
wrong answers (measured: off by 4 on hidden states of size 4), so a caller that falls back loads the backbone again.

Only ``model_type`` in :data:`BACKBONES`, fp32, CPU: elsewhere PyTorch runs (bf16 / fp16 and GPUs have
their own fast paths; other backbones are not traced here).
"""

from __future__ import annotations

import io
import logging
import warnings
import numpy as np
import torch

log = logging.getLogger(__name__)

BACKBONES = ("bert",)
BACKENDS = ("auto", "torch", "onnx")
# Largest |difference| of last hidden states between ONNX Runtime and PyTorch accepted at start-up: this, or
# SPREAD_FACTOR times the difference between PyTorch's own eager and SDPA attention on the same weights, whichever is
# larger (some weights are that sensitive to summation order: a random BERT 384 x 12 moves by 7e-5 between PyTorch's
# two kernels, by 1.5e-4 under ONNX Runtime; all-MiniLM-L6-v2's real weights by about 5e-6 under ONNX Runtime).
TOLERANCE = 1e-4
SPREAD_FACTOR = 4.0


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot run this backbone here (not installed, export failed, or the check failed)."""


class _LastHidden(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


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
        attention = getattr(model.config, "_attn_implementation", None)
        expected = self._hidden(model, probes)
        if attention is not None and attention != "eager":
            model.set_attn_implementation("eager")  # plain matmul-softmax-matmul, which ONNX Runtime fuses
            # How far PyTorch's own two attention kernels disagree on these weights: the yardstick for ours.
            spread = max(self._difference(a, b, att) for a, b, (_, att) in zip(self._hidden(model, probes), expected, probes))
        else:
            spread = 0.0
        self.tolerance = max(TOLERANCE, SPREAD_FACTOR * spread)
        buffer = io.BytesIO()
        example = tuple(torch.from_numpy(x) for x in probes[0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
                torch.onnx.export(
                    _LastHidden(model), example, buffer, dynamo=False, opset_version=17,
                    input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                    dynamic_axes={"input_ids": {0: "rows", 1: "width"}, "attention_mask": {0: "rows", 1: "width"},
                                  "last_hidden_state": {0: "rows", 1: "width"}},
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
        # these cores, and spinning workers took their time (measured in the server: ~25 % fewer tokens/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        worst = max(self._difference(self.run(ids, att), want, att) for (ids, att), want in zip(probes, expected))
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

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(input_ids.numpy(), attention_mask.numpy()))


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

