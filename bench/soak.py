"""Soak: a long, bounded load on one ``trilate serve``, loopback only, with memory watched.

    make soak                                     # 10 minutes at concurrency 32 (the defaults)
    .venv/bin/python bench/soak.py --duration 60 --concurrency 8

What it does, in order:

1. starts ``trilate serve`` (the default MiniLM unless ``--model``) on free loopback ports;
2. sends a fixed set of mixed requests (``/v1/embeddings``, ``/score``, ``/rerank``, ``/pooling``,
   ``/tokenize``) one at a time and keeps the answers;
3. for ``--duration`` seconds, ``--concurrency`` threads send those requests round-robin (and, with
   ``--perf-analyzer CMD``, perf_analyzer loads the model's embed ensemble over gRPC beside them, run after
   run; a failed run fails the soak); every answer must be
   200 and equal to the one-at-a-time answer (within what dynamic batching can change in fp32: 1e-5);
4. samples the resident memory of tritonserver, of each Python-backend stub and of the front-end
   process at one third of the run and at the end;
5. writes ``bench/results/soak-<date>-<host>.md`` and ``.json`` and exits non-zero when a request failed
   or memory grew by 5 % or more over the last two thirds.

Every loop is bounded in time and in count (``--max-requests``); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "What is machine learning?",
    "Machine learning is a subset of artificial intelligence.",
    "Python is a programming language.",
    "The weather is sunny today, with a light breeze from the west.",
    " ".join(["Late interaction keeps one vector per token and scores with MaxSim."] * 6),
]


def requests_for(model: str) -> list[tuple[str, dict]]:
    """The mixed requests of the soak: (route, body)."""
    return [
        ("/v1/embeddings", {"model": model, "input": TEXTS}),
        ("/v1/embeddings", {"model": model, "input": TEXTS[0], "encoding_format": "base64"}),
        ("/score", {"model": model, "text_1": TEXTS[0], "text_2": TEXTS[1:]}),
        ("/rerank", {"model": model, "query": TEXTS[0], "documents": TEXTS[1:], "top_n": 2}),
        ("/pooling", {"model": model, "input": TEXTS[:2], "task": "token_embed"}),
        ("/tokenize", {"model": model, "prompt": TEXTS[4]}),
    ]


def numbers(route: str, body: dict) -> np.ndarray | list:
    """What must not change between a request alone and the same request under load."""
    if route == "/v1/embeddings":
        data = body["data"]
        if isinstance(data[0]["embedding"], str):
            import base64

            return np.concatenate([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in data])
        return np.concatenate([np.asarray(d["embedding"], dtype=np.float64) for d in data])
    if route == "/score":
        return np.asarray([d["score"] for d in body["data"]])
    if route == "/rerank":
        return np.asarray([[r["index"], r["relevance_score"]] for r in body["results"]])
    if route == "/pooling":
        return np.concatenate([np.asarray(d["data"], dtype=np.float64).reshape(-1) for d in body["data"]])
    return body["tokens"]


def same(expected, got, tol: float = 1e-5) -> bool:
    if isinstance(expected, list):
        return expected == got
    return expected.shape == got.shape and bool(np.allclose(got, expected, rtol=tol, atol=tol))


def memory(served) -> dict[str, int]:
    from python_backend_models.supervision import process_tree_rss, resident_bytes

    out = process_tree_rss(served.tritonserver_pid())
    out["trilate serve (front end)"] = resident_bytes(Path(f"/proc/{served.proc.pid}"))
    return out


def run(args: argparse.Namespace) -> dict:
    import httpx
    from trilate.launch import ServeProcess

    serve_args = ([args.model] if args.model else []) + ["--model-repository", tempfile.mkdtemp(prefix="soak-repo-"),
                                                         "--uvicorn-log-level", "warning"]
    print(f"soak: starting trilate serve {' '.join(serve_args)}", flush=True)
    served = ServeProcess(serve_args, timeout=600)
    model = args.served_name or args.model or DEFAULT_MODEL
    result: dict = {"settings": vars(args).copy(), "machine": {"host": platform.node(), "cpu": _cpu(),
                                                                "threads": os.cpu_count()}}
    try:
        base = served.rest_url
        todo = requests_for(model)
        with httpx.Client(base_url=base, timeout=120) as http:
            expected = []
            for route, body in todo:
                resp = http.post(route, json=body)
                resp.raise_for_status()
                expected.append(numbers(route, resp.json()))
        counts = {"sent": 0, "failed": 0, "mismatched": 0}
        failures: list[str] = []
        latencies: list[float] = []
        lock = threading.Lock()
        start = time.monotonic()
        stop_at = start + args.duration
        samples: dict[str, dict[str, int]] = {"start": memory(served)}
        perf = None
        if args.perf_analyzer:
            perf = ThreadPoolExecutor(1).submit(_perf_analyzer_loop, args.perf_analyzer, served, model, stop_at,
                                                max(1, args.concurrency // 4))

        def worker(k: int) -> None:
            i = k
            with httpx.Client(base_url=base, timeout=120) as http:
                while time.monotonic() < stop_at:
                    with lock:
                        if counts["sent"] >= args.max_requests:
                            return
                        counts["sent"] += 1
                    route, body = todo[i % len(todo)]
                    t0 = time.monotonic()
                    try:
                        resp = http.post(route, json=body)
                        ok = resp.status_code == 200
                        why = f"{route}: HTTP {resp.status_code} {resp.text[:200]}"
                        matches = ok and same(expected[i % len(todo)], numbers(route, resp.json()))
                    except Exception as exc:  # a dropped connection is a failure like any other
                        ok, matches, why = False, False, f"{route}: {type(exc).__name__}: {exc}"
                    with lock:
                        latencies.append(time.monotonic() - t0)
                        if not ok:
                            counts["failed"] += 1
                            failures.append(why)
                        elif not matches:
                            counts["mismatched"] += 1
                            failures.append(f"{route}: answer differs from the request sent alone")
                    i += args.concurrency

        third = threading.Timer(args.duration / 3, lambda: samples.__setitem__("one third", memory(served)))
        third.start()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(worker, range(args.concurrency)))
        third.cancel()
        elapsed = time.monotonic() - start
        samples["end"] = memory(served)
        if perf is not None:
            result["perf_analyzer"] = perf.result()
    finally:
        code = served.stop()
    lat = np.sort(np.asarray(latencies)) if latencies else np.zeros(1)
    third_total = sum(samples.get("one third", samples["start"]).values())
    end_total = sum(samples["end"].values())
    growth = (end_total - third_total) / third_total if third_total else 0.0
    result.update({
        "requests": counts, "seconds": round(elapsed, 1), "requests_per_s": round(counts["sent"] / elapsed, 2),
        "p50_s": round(float(np.percentile(lat, 50)), 4), "p99_s": round(float(np.percentile(lat, 99)), 4),
        "memory_bytes": samples, "memory_growth_last_two_thirds": round(growth, 4),
        "first_failures": failures[:10], "serve_exit_code": code,
    })
    pa_failed = result.get("perf_analyzer", {}).get("failed_runs", 0)
    result["passed"] = (counts["failed"] == 0 and counts["mismatched"] == 0 and growth < 0.05 and code == 0
                        and pa_failed == 0)
    return result


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _perf_analyzer_loop(command: str, served, model: str, stop_at: float, concurrency: int) -> dict:
    """perf_analyzer against the model's embed ensemble (gRPC), run after run until ``stop_at``: each run is
    three 5-second windows at ``concurrency``; returns the runs' exit codes and rates."""
    from python_backend_models.contract import TEXT, triton_name

    work = Path(tempfile.mkdtemp(prefix="soak-pa-"))
    data = work / "texts.json"
    data.write_text(json.dumps({"data": [{TEXT: [t]} for t in TEXTS]}))
    runs = []
    while time.monotonic() < stop_at - 20:
        csv = work / f"run{len(runs)}.csv"
        cmd = [*command.split(), "-m", triton_name(model), "-u", served.grpc_url, "-i", "grpc",
               "--input-data", str(data), "--concurrency-range", str(concurrency), "-p", "5000",
               "--max-trials", "3", "--stability-percentage", "1000", "-f", str(csv)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        run = {"exit_code": proc.returncode}
        if csv.is_file():
            head, values = (line.split(",") for line in csv.read_text().splitlines()[:2])
            rec = dict(zip(head, values))
            run.update(infer_per_s=float(rec.get("Inferences/Second", "nan")),
                       p99_ms=float(rec.get("p99 latency", "nan")) / 1000)
        else:
            run["output"] = (proc.stdout + proc.stderr).strip()[-300:]
        runs.append(run)
    return {"runs": len(runs), "failed_runs": sum(r["exit_code"] != 0 for r in runs), "concurrency": concurrency,
            "infer_per_s": [r.get("infer_per_s") for r in runs], "p99_ms": [r.get("p99_ms") for r in runs],
            "first_error": next((r["output"] for r in runs if "output" in r), None)}


def report(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stem = out_dir / f"soak-{stamp}-{result['machine']['host']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    mb = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
    rows = sorted({k for s in result["memory_bytes"].values() for k in s})
    lines = [
        f"# Soak {stamp} on {result['machine']['host']}", "",
        f"{result['machine']['cpu']}, {result['machine']['threads']} threads. "
        f"`bench/soak.py --duration {result['settings']['duration']} --concurrency {result['settings']['concurrency']}`",
        "",
        "| requests sent | failed | answers differing from alone | requests/s | p50 | p99 | memory growth, last 2/3 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {result['requests']['sent']} | {result['requests']['failed']} | {result['requests']['mismatched']} | "
        f"{result['requests_per_s']} | {result['p50_s'] * 1000:.0f} ms | {result['p99_s'] * 1000:.0f} ms | "
        f"{result['memory_growth_last_two_thirds'] * 100:+.2f} % |",
        "", "| resident memory (MB) | " + " | ".join(result["memory_bytes"]) + " |",
        "| --- |" + " --- |" * len(result["memory_bytes"]),
    ]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(mb(s.get(row, 0)) for s in result["memory_bytes"].values()) + " |")
    lines.append("| **total** | " + " | ".join(mb(sum(s.values())) for s in result["memory_bytes"].values()) + " |")
    pa = result.get("perf_analyzer")
    if pa:
        rates = [r for r in pa["infer_per_s"] if r == r and r is not None]
        lines += ["", f"perf_analyzer beside the REST load (embed ensemble over gRPC, concurrency {pa['concurrency']}): "
                      f"{pa['runs']} runs of three 5 s windows, {pa['failed_runs']} failed"
                      + (f", {min(rates):.1f}-{max(rates):.1f} texts/s" if rates else "")
                      + (f"; first error: {pa['first_error']}" if pa.get("first_error") else "") + "."]
    if result["first_failures"]:
        lines += ["", "First failures:", *[f"- {f}" for f in result["first_failures"]]]
    lines += ["", f"Verdict: {'PASSED' if result['passed'] else 'FAILED'}", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem.with_suffix(".md")


def update_readme(readme: Path, result: dict, report_path: Path) -> None:
    """Replace the block between ``<!-- soak:start -->`` and ``<!-- soak:end -->`` with this run's figures."""
    text = readme.read_text()
    start, end = "<!-- soak:start -->", "<!-- soak:end -->"
    if start not in text or end not in text:
        return
    mem = result["memory_bytes"]
    third = mem.get("one third", mem["start"])
    pa = result.get("perf_analyzer") or {}
    block = "\n".join([
        start,
        f"Latest `make soak` ({report_path.name}; {result['machine']['cpu']}, {result['machine']['threads']} threads, "
        f"{result['settings']['duration']:.0f} s at concurrency {result['settings']['concurrency']}"
        + (f", perf_analyzer beside it at concurrency {pa['concurrency']}" if pa else "") + "):",
        "",
        "| requests sent | failed | differing from alone | p50 | p99 | memory at 1/3 → end (all processes) | growth |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {result['requests']['sent']} | {result['requests']['failed']} | {result['requests']['mismatched']} | "
        f"{result['p50_s'] * 1000:.0f} ms | {result['p99_s'] * 1000:.0f} ms | "
        f"{sum(third.values()) / 2**20:,.0f} → {sum(mem['end'].values()) / 2**20:,.0f} MB | "
        f"{result['memory_growth_last_two_thirds'] * 100:+.2f} % |",
        "" if not pa else f"\nperf_analyzer: {pa['runs']} runs, {pa['failed_runs']} failed.",
        end,
    ])
    before, rest = text.split(start, 1)
    readme.write_text(before + block + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--model", default=None, help="checkpoint to serve (default: the default model)")
    parser.add_argument("--served-name", default=None)
    parser.add_argument("--perf-analyzer", default=None,
                        help="command that runs perf_analyzer (make soak passes .trilate/perf_analyzer/run); "
                             "loads the embed ensemble over gRPC beside the REST load")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--readme", default=None, help="update this README's soak block with the figures")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1:
        parser.error("--duration must be positive and --concurrency at least 1")
    result = run(args)
    path = report(result, Path(args.output))
    if args.readme:
        update_readme(Path(args.readme), result, path)
    print(path.read_text(), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
