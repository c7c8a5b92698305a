"""What the REST front end adds to a request: the same request sent three ways, side by side in one run.

    .venv/bin/python bench/frontend_latency.py                 # starts `trilate serve` (default model)
    .venv/bin/python bench/frontend_latency.py --iterations 500 --json out.json
    .venv/bin/python bench/frontend_latency.py --rest-url http://127.0.0.1:8000 --triton-url 127.0.0.1:8011 \
        --model sentence-transformers/all-MiniLM-L6-v2          # against a server that is already running

For each request shape (one embedding, a batch of embeddings, score and rerank of a query against 8
documents, per-token vectors), every iteration sends, in turn:

* ``tritonclient``: one ``infer`` call on the Triton ensemble with the tensors the request needs, the
  way a tritonclient user writes it (same protocol as the front end: gRPC unless --frontend-protocol);
* ``library``: the same request through ``trilate.TrilateClient`` (request semantics, usage, typing);
* ``REST``: the same request as JSON to the front end over a kept-alive HTTP connection (httpx), the
  response parsed as JSON, as a curl / OpenAI-SDK user would.

The three are interleaved within every iteration, so drift in machine load hits all of them alike.
The front end's added latency is REST minus tritonclient (and REST minus library: the HTTP/JSON part
alone).  Runs unchanged on a GPU machine (``--device gpu`` is passed to ``trilate serve``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

QUERY = "What is machine learning?"
DOCS = [
    "Machine learning is a subset of artificial intelligence.",
    "Python is a programming language.",
    "Deep learning uses neural networks, which learn from data.",
    "The cat sat on the mat.",
    "Gradient descent minimises a loss function step by step.",
    "Paris is the capital of France.",
    "Support vector machines find a maximum-margin hyperplane.",
    "The weather is sunny today.",
]
BATCH = [f"{DOCS[i % len(DOCS)]} (sentence {i})" for i in range(32)]


class Direct:
    """Plain tritonclient calls on the ensembles (what a tritonclient user writes by hand)."""

    def __init__(self, url: str, protocol: str, triton_name: str):
        from python_backend_models import contract as C

        self.C, self.protocol, self.name = C, protocol, triton_name
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module = module
        self.client = module.InferenceServerClient(url)

    def _infer(self, model: str, inputs: dict[str, list[str]], outputs: list[str]) -> dict[str, np.ndarray]:
        tensors = []
        for name, texts in inputs.items():
            array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
            tensor = self.module.InferInput(name, list(array.shape), "BYTES")
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
                requested = [self.module.InferRequestedOutput(o, binary_data=True) for o in outputs]
            else:
                tensor.set_data_from_numpy(array)
                requested = [self.module.InferRequestedOutput(o) for o in outputs]
            tensors.append(tensor)
        result = self.client.infer(model, tensors, outputs=requested)
        return {o: result.as_numpy(o) for o in outputs}

    def embed(self, texts):
        return self._infer(self.name, {self.C.TEXT: texts}, [self.C.EMBEDDINGS, self.C.PROMPT_TOKENS])

    def token_embed(self, texts):
        return self._infer(self.name, {self.C.TEXT: texts},
                           [self.C.TOKEN_EMBEDDINGS, self.C.NUM_TOKENS, self.C.PROMPT_TOKENS])

    def score(self, query, docs):
        C = self.C
        return self._infer(C.stage_name(self.name, "score"), {C.QUERIES: [query], C.DOCUMENTS: docs},
                           [C.SCORES, C.QUERY_PROMPT_TOKENS, C.DOCUMENT_PROMPT_TOKENS])


def scenarios(model: str, direct: Direct, lib, http):
    """name -> (tritonclient call, library call, REST call); each returns something to sanity-check."""

    def rest(route, body):
        def call():
            resp = http.post(route, json=body)
            resp.raise_for_status()
            return resp.json()
        return call

    return {
        "embeddings, 1 text": (
            lambda: direct.embed([QUERY]), lambda: lib.embed(model, QUERY),
            rest("/v1/embeddings", {"model": model, "input": QUERY})),
        "embeddings, 32 texts": (
            lambda: direct.embed(BATCH), lambda: lib.embed(model, BATCH),
            rest("/v1/embeddings", {"model": model, "input": BATCH})),
        "embeddings, 32 texts, base64": (
            lambda: direct.embed(BATCH), lambda: lib.embed(model, BATCH),
            rest("/v1/embeddings", {"model": model, "input": BATCH, "encoding_format": "base64"})),
        "score, 1 x 8 docs": (
            lambda: direct.score(QUERY, DOCS), lambda: lib.score(model, QUERY, DOCS),
            rest("/score", {"model": model, "text_1": QUERY, "text_2": DOCS})),
        "rerank, 1 x 8 docs": (
            lambda: direct.score(QUERY, DOCS), lambda: lib.rerank(model, QUERY, DOCS),
            rest("/rerank", {"model": model, "query": QUERY, "documents": DOCS})),
        "pooling token_embed, 1 text": (
            lambda: direct.token_embed([QUERY]), lambda: lib.pooling(model, QUERY, task="token_embed"),
            rest("/pooling", {"model": model, "input": QUERY, "task": "token_embed"})),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="served name to benchmark (a bi-encoder: every scenario needs `embed`)")
    parser.add_argument("--serve", nargs="*", default=None, metavar="MODEL",
                        help="models for the `trilate serve` this script starts (default: --model)")
    parser.add_argument("--frontend-protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--rest-url", default=None, help="use a running front end instead of starting one")
    parser.add_argument("--triton-url", default=None, help="its tritonserver (gRPC, or HTTP with --frontend-protocol http)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import httpx
    from python_backend_models import contract as C
    from trilate import TrilateClient
    from trilate.launch import ServeProcess

    server = None
    if args.rest_url:
        if not args.triton_url:
            parser.error("--rest-url needs --triton-url")
        rest_url, triton_url = args.rest_url, args.triton_url
    else:
        print(f"starting trilate serve {' '.join(args.serve or [args.model])} ...", file=sys.stderr, flush=True)
        server = ServeProcess([*(args.serve or [args.model]), "--frontend-protocol", args.frontend_protocol,
                               "--device", args.device, "--uvicorn-log-level", "warning"])
        rest_url = server.rest_url
        triton_url = server.grpc_url if args.frontend_protocol == "grpc" else server.http_url
    try:
        lib = TrilateClient(triton_url, protocol=args.frontend_protocol)
        direct = Direct(triton_url, args.frontend_protocol, C.triton_name(args.model))
        results = []
        with httpx.Client(base_url=rest_url, timeout=120) as http:
            for name, calls in scenarios(args.model, direct, lib, http).items():
                times: dict[str, list[float]] = {"tritonclient": [], "library": [], "REST": []}
                for i in range(args.warmup + args.iterations):
                    for label, call in zip(times, calls):
                        start = time.perf_counter()
                        call()
                        elapsed = time.perf_counter() - start
                        if i >= args.warmup:
                            times[label].append(elapsed * 1000.0)
                row = {"scenario": name}
                for label, values in times.items():
                    row[label] = {"p50": percentile(values, 50), "p90": percentile(values, 90),
                                  "mean": statistics.fmean(values)}
                row["added_p50_ms"] = row["REST"]["p50"] - row["tritonclient"]["p50"]
                row["added_mean_ms"] = row["REST"]["mean"] - row["tritonclient"]["mean"]
                row["http_json_p50_ms"] = row["REST"]["p50"] - row["library"]["p50"]
                results.append(row)
                print(f"{name}: done", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    print(f"\nFront-end latency, {args.iterations} iterations per scenario after {args.warmup} warm-up, model "
          f"{args.model}, device {args.device}, front end -> tritonserver over {args.frontend_protocol}; {machine}\n")
    header = ("| request | tritonclient p50 / p90 (ms) | library p50 (ms) | REST p50 / p90 (ms) | "
              "added by REST, p50 (mean) (ms) | of which HTTP+JSON, p50 (ms) |")
    print(header)
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['scenario']} | {r['tritonclient']['p50']:.2f} / {r['tritonclient']['p90']:.2f} | "
              f"{r['library']['p50']:.2f} | {r['REST']['p50']:.2f} / {r['REST']['p90']:.2f} | "
              f"{r['added_p50_ms']:+.2f} ({r['added_mean_ms']:+.2f}) | {r['http_json_p50_ms']:+.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
