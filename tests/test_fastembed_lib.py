"""``bench/fastembed_lib.py``: fastembed on the benchmark's weights gives the references' vectors.

The benchmark compares fastembed with sentence-transformers on "the same weights and texts"; this proves it for
the export and the truncation: the real all-MiniLM-L6-v2 against ``SentenceTransformer.encode`` (256 tokens) and
a tiny Stanford ColBERT (dim 96, doc_maxlen 300, as the benchmark writes it, at the tiny sizes) against
``MultiVectorEncoder.encode_document`` (300 tokens, marker included).  One text is longer than both limits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_checkpoints

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import fastembed_lib  # noqa: E402

TEXTS = [
    "hello world",
    "What is the role of attention in transformer encoders?",
    " ".join(f"token{i} and more words" for i in range(100)),  # 400 words: past 256 and 300 tokens
    "x",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Punctuation -- (brackets), commas; and \"quotes\"!",
]
BATCH = 4  # mixed lengths within a batch, and a second, smaller batch
TOLERANCE = 1e-4
DOC_MAXLEN = 300


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def colbert_checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoints.write_stanford_colbert(tmp_path_factory.mktemp("fastembed_colbert"), dim=96, seed=0,
                                                   doc_maxlen=DOC_MAXLEN)


def test_minilm_matches_sentence_transformers(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    onnx_dir = fastembed_lib.export("minilm", minilm_path, tmp_path / "minilm")
    encode, library = fastembed_lib.load("minilm", onnx_dir, threads=2)
    assert library.startswith("fastembed ") and "TextEmbedding" in library
    got = np.stack(encode(TEXTS, BATCH))

    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 256
    want = model.encode(TEXTS, batch_size=BATCH, normalize_embeddings=True)
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert np.abs(_unit(got) - _unit(want)).max() <= TOLERANCE


def test_colbert_matches_multi_vector_encoder(colbert_checkpoint, tmp_path):
    from sentence_transformers import MultiVectorEncoder

    onnx_dir = fastembed_lib.export("colbert", colbert_checkpoint, tmp_path / "colbert")
    encode, library = fastembed_lib.load("colbert", onnx_dir, threads=2)
    assert "LateInteractionTextEmbedding" in library
    got = encode(TEXTS, BATCH)

    model = MultiVectorEncoder(str(colbert_checkpoint), device="cpu", local_files_only=True)
    want = [np.asarray(v) for v in model.encode_document(TEXTS, batch_size=BATCH)]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[2].shape == (DOC_MAXLEN, 96)  # the long one: truncated to doc_maxlen, marker included
    for g, w in zip(got, want):
        assert np.abs(_unit(g) - _unit(w)).max() <= TOLERANCE


def test_export_is_skipped_when_up_to_date_and_redone_when_the_source_changes(colbert_checkpoint, tmp_path):
    out = tmp_path / "colbert"
    fastembed_lib.export("colbert", colbert_checkpoint, out)
    graph = out / "vespa_colbert.onnx"
    first = graph.stat().st_mtime_ns
    fastembed_lib.export("colbert", colbert_checkpoint, out)
    assert graph.stat().st_mtime_ns == first

    copy = tmp_path / "copy"  # another source (same bytes, other path): exported again
    copy.mkdir()
    for f in colbert_checkpoint.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    fastembed_lib.export("colbert", copy, out)
    assert graph.stat().st_mtime_ns != first


def test_unknown_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        fastembed_lib.export("bge-m3", tmp_path, tmp_path / "out")
