"""The ONNX Runtime backbone (``families.onnx_backbone``): where ``auto`` picks it, where it is refused, and
what happens when its start-up check fails.  Its vectors against the references: tests/test_parity.py
(every parity test there runs once per backend)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from python_backend_models import contract as C
from python_backend_models.checkpoint import open_checkpoint
from python_backend_models.config import parse_pbtxt
from python_backend_models.families import load_encoder, onnx_backbone
from python_backend_models.registry import describe
from python_backend_models.repository import BuildOptions, ServeSpec, build_repository


def _encoder(path, overrides=None, dtype="auto"):
    info = describe(open_checkpoint(path, overrides), "m", hf_overrides=overrides)
    return load_encoder(info, dtype=dtype)


def test_auto_runs_a_bert_backbone_on_onnx_runtime_in_float32_on_cpu(minilm_path):
    encoder = _encoder(minilm_path)
    assert encoder.use_backend("auto") == "onnx"
    assert encoder.backbone is None  # the weights are held once, by the ONNX Runtime session
    assert encoder.onnx.max_difference <= 1e-5
    before = encoder.forward_passes
    item = {"input_ids": np.array([101, 2054, 2003, 102]), "attention_mask": np.ones(4, np.int64),
            "output_mask": np.ones(4, bool)}
    (out,) = encoder.encode([item], want_pooled=True)
    assert encoder.forward_passes == before + 1 and out.embedding.shape == (384,)


def test_auto_keeps_pytorch_for_other_backbones_and_dtypes(modernbert_colbert, stanford_colbert):
    modern = _encoder(modernbert_colbert, {"architectures": ["ColBERTModernBertModel"]})
    assert modern.use_backend("auto") == "torch" and modern.onnx is None and modern.backbone is not None
    bf16 = _encoder(stanford_colbert, dtype="bfloat16")
    assert bf16.use_backend("auto") == "torch"
    assert _encoder(stanford_colbert).use_backend("torch") == "torch"


def test_onnx_where_it_cannot_run_is_an_error_naming_why(modernbert_colbert, stanford_colbert):
    modern = _encoder(modernbert_colbert, {"architectures": ["ColBERTModernBertModel"]})
    with pytest.raises(ValueError, match="'modernbert'"):
        modern.use_backend("onnx")
    with pytest.raises(ValueError, match="bfloat16 on cpu"):
        _encoder(stanford_colbert, dtype="bfloat16").use_backend("onnx")
    with pytest.raises(ValueError, match="auto, torch, onnx"):
        _encoder(stanford_colbert).use_backend("tensorrt")


def test_a_failed_start_up_check_keeps_pytorch_under_auto_and_fails_under_onnx(stanford_colbert, monkeypatch,
                                                                                caplog):
    reference = _encoder(stanford_colbert)
    monkeypatch.setattr(onnx_backbone, "TOLERANCE", -1.0)  # no difference is small enough
    monkeypatch.setattr(onnx_backbone, "SPREAD_FACTOR", -1.0)
    encoder = _encoder(stanford_colbert)
    with caplog.at_level(logging.WARNING):
        assert encoder.use_backend("auto") == "torch"
    assert "keeping PyTorch" in caplog.text and "differs from PyTorch" in caplog.text
    assert encoder.backbone is not None and encoder.onnx is None and "differs" in encoder.backend_reason
    # The exporter traced (and so changed) the first module: the fallback's answers are the fresh module's.
    ids = torch.from_numpy(np.random.default_rng(2).integers(1, encoder.vocab_size, size=(3, 11)))
    att = torch.ones_like(ids)
    with torch.inference_mode():
        assert torch.equal(encoder.forward_pack(ids, att, [], [11] * 3), reference.forward_pack(ids, att, [], [11] * 3))
    with pytest.raises(onnx_backbone.OnnxUnavailable, match="differs from PyTorch"):
        _encoder(stanford_colbert).use_backend("onnx")


def test_the_exported_graph_follows_every_shape_as_pytorch_does(stanford_colbert):
    """Rows and widths the export never saw (it traced one padded 3 x 17 batch)."""
    ours, reference = _encoder(stanford_colbert), _encoder(stanford_colbert)
    ours.use_backend("onnx")
    rng = np.random.default_rng(1)
    for rows, width in ((1, 1), (7, 3), (2, 180), (33, 12)):
        ids = torch.from_numpy(rng.integers(1, ours.vocab_size, size=(rows, width)))
        att = torch.ones(rows, width, dtype=torch.int64)
        att[0, width // 2 + 1:] = 0
        lengths = [width // 2 + 1] + [width] * (rows - 1)
        with torch.inference_mode():
            want = reference.forward_pack(ids, att, [], lengths)
        got = ours.forward_pack(ids, att, [], lengths)
        live = att.bool()
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert float((got[live] - want[live]).abs().max()) <= 1e-5


def test_the_encoder_backend_option_reaches_the_encoder_config(tmp_path, stanford_colbert):
    for backend in ("auto", "torch"):
        root = tmp_path / backend
        build_repository([ServeSpec(model=str(stanford_colbert), served_name="m")], root,
                         BuildOptions(encoder_backend=backend))
        config = parse_pbtxt((root / C.stage_name("m", "encoder") / "config.pbtxt").read_text())
        assert config.parameters["backend"].string_value == backend
