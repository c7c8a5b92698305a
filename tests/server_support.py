"""A real tritonserver for the tests: built from the generated repository, on free loopback ports,
started once per test session (loading every model takes ~20 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from python_backend_models.repository import BuildOptions, ServeSpec, build_repository
from python_backend_models.server import ServerConfig, TritonServer
from trilate.launch import free_ports

DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
STANFORD = "tiny/stanford-colbert"
PYLATE = "tiny/pylate-colbert"  # served with ColBERT query/document scoring
PYLATE_VLLM = "tiny/pylate-colbert-vllm"  # the same checkpoint, vLLM's symmetric scoring
MODERNBERT = "tiny/modernbert-colbert"
JINA = "tiny/jina-colbert"
LFM2 = "tiny/lfm2-colbert"
BGE_M3 = "tiny/bge-m3"
COLQWEN3 = "tiny/colqwen3-tomoro"
COLQWEN3_OPS = "tiny/colqwen3-opensearch"
COLQWEN3_NVIDIA = "tiny/colqwen3-nvidia"
COLQWEN35 = "tiny/colqwen3.5"
NEMOTRON_EMBED = "tiny/nemotron-embed-vl"
NEMOTRON_RERANK = "tiny/nemotron-rerank-vl"
# A ColBERT checkpoint whose query prefix is not a token, under a name holding "__" (which the Triton
# naming must keep apart from stage names).
ODD = "tiny/colbert__prefix-not-a-token"
# A Python-backend model run by the real stub that reports the stub's pb_utils constants (test_server.py).
PROBE = "trilate_test__pb_utils_probe"

PROBE_MODEL = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils

NAMES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
         "CANCELLED")


class TritonPythonModel:
    def execute(self, requests):
        report = {"codes": {name: int(getattr(pb_utils.TritonError, name)) for name in NAMES
                            if hasattr(pb_utils.TritonError, name)}}
        error = pb_utils.TritonError("probe", pb_utils.TritonError.INVALID_ARG)
        report["error"] = [error.message(), int(error.code())]
        out = np.array([json.dumps(report).encode("utf-8")], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("report", out)]) for _ in requests]
"""

PROBE_CONFIG = """name: "%s"
backend: "python"
max_batch_size: 0
input { name: "x" data_type: TYPE_INT32 dims: [ 1 ] }
output { name: "report" data_type: TYPE_STRING dims: [ 1 ] }
instance_group { kind: KIND_CPU count: 1 }
""" % PROBE


def write_probe(repository: Path) -> None:
    folder = repository / PROBE
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(PROBE_CONFIG, encoding="utf-8")
    (folder / "1" / "model.py").write_text(PROBE_MODEL, encoding="utf-8")

# Every late-interaction model the test server serves: served name -> (checkpoint fixture, reference
# checkpoint fixture for PyLate's conventions, architecture).
COLBERTS = {
    STANFORD: ("stanford_colbert", "stanford_colbert", "HF_ColBERT"),
    PYLATE_VLLM: ("pylate_colbert", "pylate_colbert", "HF_ColBERT"),
    MODERNBERT: ("modernbert_colbert", "modernbert_colbert", "ColBERTModernBertModel"),
    JINA: ("jina_colbert", "jina_colbert_twin", "ColBERTJinaRobertaModel"),
    LFM2: ("lfm2_colbert", "lfm2_colbert", "ColBERTLfm2Model"),
}


def arch(name: str) -> dict:
    return {"architectures": [name]}


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, stanford_colbert, pylate_colbert, modernbert_colbert, jina_colbert, lfm2_colbert,
                  bge_m3, pylate_colbert_prefix_not_a_token, colqwen3_tomoro, colqwen3_opensearch, colqwen3_nvidia, colqwen35, nemotron_embed,
                  nemotron_rerank):
    root = tmp_path_factory.mktemp("server")
    specs = [
        ServeSpec(model=DEFAULT),
        ServeSpec(model=str(stanford_colbert), served_name=STANFORD),
        ServeSpec(model=str(pylate_colbert), served_name=PYLATE, hf_overrides=arch("HF_ColBERT"),
                  colbert_score_modes=True),
        ServeSpec(model=str(pylate_colbert), served_name=PYLATE_VLLM, hf_overrides=arch("HF_ColBERT")),
        ServeSpec(model=str(modernbert_colbert), served_name=MODERNBERT, hf_overrides=arch("ColBERTModernBertModel")),
        # The real jina-colbert-v2 offers 128/96/64; the tiny one (dim 16) is given 16 and 8.
        ServeSpec(model=str(jina_colbert), served_name=JINA,
                  hf_overrides={**arch("ColBERTJinaRobertaModel"), "matryoshka_dimensions": [16, 8]}),
        ServeSpec(model=str(lfm2_colbert), served_name=LFM2, hf_overrides=arch("ColBERTLfm2Model")),
        ServeSpec(model=str(bge_m3), served_name=BGE_M3, hf_overrides=arch("BgeM3EmbeddingModel")),
        ServeSpec(model=str(pylate_colbert_prefix_not_a_token), served_name=ODD, hf_overrides=arch("HF_ColBERT")),
        ServeSpec(model=str(colqwen3_tomoro), served_name=COLQWEN3),
        ServeSpec(model=str(colqwen3_opensearch), served_name=COLQWEN3_OPS),
        ServeSpec(model=str(colqwen3_nvidia), served_name=COLQWEN3_NVIDIA),
        ServeSpec(model=str(colqwen35), served_name=COLQWEN35),
        ServeSpec(model=str(nemotron_embed), served_name=NEMOTRON_EMBED),
        ServeSpec(model=str(nemotron_rerank), served_name=NEMOTRON_RERANK),
    ]
    # A queue delay makes concurrent requests meet in one dynamic batch, which the tests rely on.
    build_repository(specs, root / "repo", BuildOptions(max_queue_delay_us=20000))
    write_probe(root / "repo")
    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        ServerConfig(model_repository=root / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics),
        log_file=root / "tritonserver.log",
    )
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["http", "grpc"])
def client(request, triton_server):
    from trilate import TrilateClient

    url = triton_server.http_url if request.param == "http" else triton_server.grpc_url
    return TrilateClient(url, protocol=request.param)


def server_log(server: TritonServer) -> str:
    return Path(server.log_file).read_text(errors="replace") if server.log_file else ""
