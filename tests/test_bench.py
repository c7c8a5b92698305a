"""`make bench`'s plumbing on tiny models: it runs end to end and writes its files.  Never its speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_bench_writes_its_result_files_and_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\ntail\n", encoding="utf-8")
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--tiny", "--out", str(out), "--readme", str(readme),
           "--documents", "8", "--max-tokens", "40", "--docs-per-request", "4", "--concurrency", "1,2",
           "--batch-sizes", "4", "--repeats", "1", "--rerank-docs", "6", "--perf-analyzer", "off",
           "--machine-seconds", "0.05"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (md,), (js,), (png,) = out.glob("*.md"), out.glob("*.json"), out.glob("*.png")
    assert md.stem == js.stem == png.stem
    result = json.loads(js.read_text())
    assert set(result) >= {"machine", "inprocess", "trilate", "rerank", "settings"}
    assert result["machine"]["fp32_gflops"] > 0 and result["machine"]["cpu_count"] >= 1
    for model in ("colbert-small", "minilm"):
        assert result["inprocess"][model]["tokens_per_s"] > 0
        assert set(result["trilate"][model]) == {"grpc", "rest"}
        assert all(v > 0 for by_c in result["trilate"][model].values() for v in by_c.values())
        assert result["rerank"][model]["grpc"] > 0
        low = result["low_precision"][model]  # the opt-in bfloat16 server, against the float32 one's vectors
        assert low["dtype"] == "bfloat16" and low["tokens_per_s"] > 0 and 0.99 < low["cosine_min"] <= 1.0 + 1e-6
    # Every library on the same weights: fastembed on an ONNX export of the small models, sentence-transformers'
    # MultiVectorEncoder on the GTE-ModernColBERT layout, FlagEmbedding on BGE-M3's; the ratio's reference is the best.
    libraries = {key: set(r["libraries"]) for key, r in result["inprocess"].items()}
    assert {lib.split()[0] for lib in libraries["minilm"]} == {"sentence-transformers", "fastembed"}
    assert {lib.split()[0] for lib in libraries["colbert-small"]} == {"sentence-transformers", "fastembed"}
    assert libraries["moderncolbert"] == {"sentence-transformers MultiVectorEncoder.encode_document"}
    assert libraries["bge-m3"] == {"FlagEmbedding BGEM3FlagModel.encode (dense)"}
    for key, r in result["inprocess"].items():
        assert r["tokens_per_s_first"] == max(lib["tokens_per_s"] for lib in r["libraries"].values())
    for key in ("moderncolbert", "bge-m3"):  # the large models: their own concurrencies, no rerank
        assert set(result["trilate"][key]["grpc"]) == {"1", "4"} and result["rerank"][key] == {}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Summary" in md.read_text() and "## Opt-in low precision" in md.read_text()
    backends = result["settings"]["encoder_backends"]  # each encoder's runtime, as trilate serve printed it
    assert sorted(line.rsplit(" ", 1)[1] for line in backends) == ["onnx", "onnx", "torch", "torch"]  # BERT on ONNX
    text = readme.read_text()
    assert "old" not in text and "| colbert-small |" in text and text.endswith("<!-- bench:end -->\n\ntail\n")


def test_vl_memory_serves_a_sharded_colqwen3_and_writes_its_figures_and_the_readme_block(tmp_path):
    """`make vl-memory`'s plumbing on the tiny sizes (the 4B run is `make vl-memory`; its figures are in the
    README): a sharded bf16 Tomoro-layout checkpoint through `trilate serve`, one page image, every process's peak."""
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- vl-memory:start -->\nold\n<!-- vl-memory:end -->\n\ntail\n", encoding="utf-8")
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "bench" / "vl_memory.py"), "--tiny", "--cache", str(tmp_path / "cache"),
           "--output", str(out), "--readme", str(readme), "--timeout", "300"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (js,) = out.glob("vl-memory-tiny-*.json")
    result = json.loads(js.read_text())
    assert result["checkpoint"]["shards"] > 1 and result["dim"] == 16 and result["tokens"] >= 4
    names = {p["process"] for p in result["processes_after_answer"]}
    assert {"tritonserver", "trilate serve (front end)", "stub tomoro-tiny-random__encoder"} <= names
    assert result["encoder_peak_bytes"] > 0 and result["tree_peak_sum_bytes"] >= result["encoder_peak_bytes"]
    assert len(result["answer_s"]) == 2
    text = readme.read_text()
    assert "old" not in text and "| encoder stub peak |" in text and text.endswith("<!-- vl-memory:end -->\n\ntail\n")
