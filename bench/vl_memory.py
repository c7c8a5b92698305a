"""Memory of a real-sized ColQwen3 served in bf16: `make vl-memory` (not part of `make test`).

1. Writes (once; cached under $TRILATE_CACHE or .trilate-cache/, keyed by everything that shapes it) a checkpoint
   with TomoroAI/tomoro-colqwen3-embed-4b's configuration and RANDOM bf16 weights in Tomoro's key layout, as
   ~2 GB safetensors shards + model.safetensors.index.json, one shard at a time (tests/tiny_colqwen.py's
   writer with ``shard_bytes``).  Sizes: Qwen/Qwen3-VL-4B-Instruct's config.json (text hidden 2560, 36 layers,
   intermediate 9728, 32 / 8 heads, head_dim 128, vocab 151936, tie_word_embeddings true; vision depth 24,
   hidden 1024, intermediate 4096, 16 heads, patch 16, merge 2, temporal 2, out 2560, DeepStack [5, 11, 17]);
   projection ``embedding_proj_layer`` 2560 -> 320 with a bias (``embed_dim`` 320, reference/vllm_semantics.md
   §5.1).  The tokenizer is the tiny builder's (494 tokens; config.json's vocab_size stays 151936 and the
   special-token ids are the tokenizer's, so embedding rows past 494 are never looked up).
2. Starts ``trilate serve <checkpoint> --dtype bfloat16`` on loopback ports, sends one page image (a generated
   1024x1024 PNG that the processor scales down to its ``max_pixels``) to /pooling as ``messages`` and checks
   the answer: one 320-d unit vector per token.
3. Reads the peak resident memory (VmHWM) of every process of the server tree -- the encoder's Python-backend
   stub above all -- and the wall time to load and to answer; prints them, writes
   bench/results/vl-memory-<date>-<host>.json and, with --readme, the README's vl-memory block.

The bar: the encoder's peak near the bf16 weights (~8.9 GB), not twice that.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIN_PIXELS = 32 * 32
GENERATOR_VERSION = 1  # bump when the files the writer produces change


@dataclass(frozen=True)
class Target:
    served_name: str
    sizes: str  # a tiny_colqwen sizes attribute (None: Qwen3VLSizes())
    dim: int
    shard_bytes: int
    max_pixels: int  # the processor's longest_edge in pixels


TARGETS = {
    # TomoroAI/tomoro-colqwen3-embed-4b: embed_dim 320.  512 * 512 pixels -> 256 image tokens, so one forward stays
    # within a minute or two on 2 cores (Tomoro's own processor allows up to 1280 tokens per page).
    "4b": Target("tomoro-4b-random", "QWEN3_VL_4B", 320, 2 * 10**9, 512 * 512),
    # The plumbing on the tiny default sizes (tests/test_bench.py), in shards of 300 kB.
    "tiny": Target("tomoro-tiny-random", None, 16, 300_000, 64 * 64),
}


def _tiny_colqwen():
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_colqwen

    return tiny_colqwen


def checkpoint(cache: Path, target: Target) -> tuple[Path, dict]:
    """The cached random checkpoint (written first when absent) and what writing it cost (empty when cached)."""
    import torch

    tc = _tiny_colqwen()
    sizes = getattr(tc, target.sizes) if target.sizes else tc.Qwen3VLSizes()
    spec = {"sizes": sizes.__dict__, "layout": "tomoro", "dim": target.dim, "dtype": "bfloat16", "tie": True,
            "seed": 7, "min_pixels": MIN_PIXELS, "max_pixels": target.max_pixels, "shard_bytes": target.shard_bytes,
            "version": GENERATOR_VERSION}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:16]
    path = cache / "vl-memory" / f"{target.served_name}-{key}"
    if (path / "model.safetensors.index.json").is_file():
        return path, {}
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"vl-memory: writing the random checkpoint to {path} (once)", flush=True)
    start = time.monotonic()
    tc.write_colqwen3(partial, "tomoro", dim=target.dim, sizes=sizes, dtype=torch.bfloat16, tie_word_embeddings=True,
                      shard_bytes=target.shard_bytes, min_pixels=MIN_PIXELS, max_pixels=target.max_pixels)
    (partial / "vl-memory.json").write_text(json.dumps(spec, indent=2, default=list) + "\n")
    partial.rename(path)
    # ru_maxrss: KiB on Linux; this process did nothing big before writing.
    return path, {"seconds": time.monotonic() - start,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def page_png(side: int = 1024) -> bytes:
    """A deterministic 'page': white, with dark text-like bars and a grey figure box."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(0)
    y = 60
    while y < side - 60:
        if 300 < y < 460:
            draw.rectangle([80, 300, side - 80, 460], fill=(190, 190, 200))
            y = 480
            continue
        width = int(rng.integers(side // 2, side - 160))
        draw.rectangle([80, y, 80 + width, y + 12], fill=(30, 30, 30))
        y += 28
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def read_bytes(pid: int) -> int:
    """Bytes ``pid`` has made the kernel read from storage so far (/proc/<pid>/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """RssAnon / RssFile of one process every 0.2 s, keeping the largest of each (VmHWM does not split them: the
    weights are file pages of the mapped checkpoint, what the forward allocates is anonymous memory)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                now = _status(self.pid)
            except OSError:
                return
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now.get(key, 0))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def process_tree(root_pid: int) -> list[dict]:
    """Every live process under ``root_pid`` (itself included): pid, what it is, VmHWM and VmRSS in bytes."""
    from python_backend_models.supervision import STUB_BINARY, child_processes

    out, todo = [], [(root_pid, None)]
    while todo:
        pid, argv = todo.pop()
        if argv is None:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        exe = Path(argv[0].decode(errors="replace")).name
        if exe == STUB_BINARY and len(argv) > 1:
            name = f"stub {Path(argv[1].decode(errors='replace')).parent.parent.name}"
        elif exe == "tritonserver":
            name = "tritonserver"
        elif pid == root_pid:
            name = "trilate serve (front end)"
        else:
            name = exe
        try:
            out.append({"pid": pid, "process": name, **_status(pid)})
        except OSError:
            continue
        todo.extend((int(entry.name), child_argv) for entry, child_argv in child_processes(pid))
    return out


def run(args: argparse.Namespace) -> dict:
    import httpx
    from trilate.launch import ServeProcess

    target = TARGETS["tiny" if args.tiny else "4b"]
    cache = Path(args.cache or os.environ.get("TRILATE_CACHE") or ROOT / ".trilate-cache")
    ckpt, written = checkpoint(cache, target)
    files = sorted(ckpt.glob("*.safetensors"))
    weights = sum(f.stat().st_size for f in files)
    print(f"vl-memory: checkpoint {ckpt} ({len(files)} shards, {weights / 1e9:.2f} GB)", flush=True)
    repo = tempfile.mkdtemp(prefix="vl-memory-repo-")
    available = _meminfo("MemAvailable")
    serve_args = [str(ckpt), "--dtype", "bfloat16", "--served-model-name", target.served_name,
                  "--model-repository", repo, "--uvicorn-log-level", "warning", "--startup-timeout", str(args.timeout)]
    print(f"vl-memory: trilate serve {' '.join(serve_args)}", flush=True)
    start = time.monotonic()
    served = ServeProcess(serve_args, timeout=args.timeout + 60)
    try:
        load_s = time.monotonic() - start
        after_load = process_tree(served.proc.pid)
        encoder_pid = next((p["pid"] for p in after_load if p["process"].endswith("__encoder")), None)
        if encoder_pid is None:
            raise SystemExit(f"vl-memory: no encoder stub among {[p['process'] for p in after_load]}")
        read_at_load = read_bytes(encoder_pid)
        sampler = Sampler(encoder_pid)
        png = page_png()
        body = {"model": target.served_name, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}]}]}
        print(f"vl-memory: ready in {load_s:.0f} s; sending a 1024x1024 page to /pooling (scaled to "
              f"{target.max_pixels} pixels)", flush=True)
        answer_s, read_answering, answers = [], [], []
        with httpx.Client(base_url=served.rest_url, timeout=args.timeout) as http:
            # Twice: the first answer faults the mapped weights in, the second shows what a warm one costs.
            for _ in range(2):
                before = read_bytes(encoder_pid)
                start = time.monotonic()
                resp = http.post("/pooling", json=body)
                answer_s.append(time.monotonic() - start)
                read_answering.append(read_bytes(encoder_pid) - before)
                if resp.status_code != 200:
                    raise SystemExit(f"vl-memory: /pooling answered {resp.status_code}: {resp.text[:2000]}")
                answers.append(np.asarray(resp.json()["data"][0]["data"], dtype=np.float32))
                print(f"vl-memory: answered in {answer_s[-1]:.0f} s", flush=True)
        sampled = sampler.stop()
        vectors = answers[0]
        norms = np.linalg.norm(vectors, axis=-1) if vectors.ndim == 2 else np.array([])
        image_tokens = target.max_pixels // (32 * 32)
        ok = (vectors.ndim == 2 and vectors.shape[1] == target.dim and vectors.shape[0] >= image_tokens
              and bool(np.isfinite(vectors).all()) and bool(np.allclose(norms, 1.0, atol=1e-3))
              and answers[1].shape == vectors.shape and bool(np.allclose(answers[1], vectors, atol=1e-5)))
        if not ok:
            raise SystemExit(f"vl-memory: the answers are not the same {target.dim}-d unit vectors for >= "
                             f"{image_tokens} tokens: shape {list(vectors.shape)}, norms "
                             f"{norms.min() if norms.size else None}..{norms.max() if norms.size else None}")
        after_answer = process_tree(served.proc.pid)
    finally:
        served.stop()
        shutil.rmtree(repo, ignore_errors=True)
    encoder = next((p for p in after_answer if p["process"].endswith("__encoder")), None)
    return {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"host": platform.node(), "cpu": _cpu(), "threads": os.cpu_count(),
                    "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "available_bytes": available},
        "checkpoint": {"path": str(ckpt), "shards": len(files), "weights_bytes": weights,
                       "disk_bytes": sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file()),
                       "written": written},
        "load_s": load_s, "answer_s": answer_s, "tokens": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
        "processes_after_load": after_load, "processes_after_answer": after_answer,
        "encoder_peak_bytes": encoder["VmHWM"] if encoder else None,
        "encoder_answering_peaks_bytes": sampled,
        "encoder_read_bytes": {"loading": read_at_load, "answering": read_answering},
        "tree_peak_sum_bytes": sum(p["VmHWM"] for p in after_answer),
        "tree_rss_after_answer_bytes": sum(p["VmRSS"] for p in after_answer),
    }


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def summary(result: dict) -> list[str]:
    gb = 1e9
    lines = [f"checkpoint: {result['checkpoint']['shards']} shards, {result['checkpoint']['weights_bytes'] / gb:.2f} "
             f"GB of bf16 weights ({result['checkpoint']['disk_bytes'] / gb:.2f} GB on disk)",
             f"load (trilate serve until ready): {result['load_s']:.0f} s; one page (/pooling, {result['tokens']} "
             f"tokens x {result['dim']}): {result['answer_s'][0]:.0f} s first, {result['answer_s'][1]:.0f} s again",
             "peak resident memory (VmHWM) per process:"]
    written = result["checkpoint"]["written"]
    if written:
        lines.insert(1, f"written in {written['seconds']:.0f} s; the writer's peak resident memory "
                        f"{written['peak_rss_bytes'] / gb:.2f} GB")
    for p in sorted(result["processes_after_answer"], key=lambda p: -p["VmHWM"]):
        lines.append(f"  {p['process']:<40} peak {p['VmHWM'] / gb:6.2f} GB   now {p['VmRSS'] / gb:6.2f} GB")
    lines.append(f"  {'sum of the peaks':<40} {result['tree_peak_sum_bytes'] / gb:6.2f} GB")
    sampled, read = result["encoder_answering_peaks_bytes"], result["encoder_read_bytes"]
    lines.append(f"encoder while answering (0.2 s samples): peak file-backed {sampled['RssFile'] / gb:.2f} GB (the "
                 f"mapped weights), peak anonymous {sampled['RssAnon'] / gb:.2f} GB; read from storage: "
                 f"{read['loading'] / gb:.2f} GB loading, {read['answering'][0] / gb:.2f} GB answering first, "
                 f"{read['answering'][1] / gb:.2f} GB again")
    return lines


def update_readme(readme: Path, result: dict, report_name: str) -> None:
    """Replace the block between ``<!-- vl-memory:start -->`` and ``<!-- vl-memory:end -->``."""
    text = readme.read_text()
    start, end = "<!-- vl-memory:start -->", "<!-- vl-memory:end -->"
    if start not in text or end not in text:
        return
    gb = 1e9
    procs = {p["process"]: p for p in result["processes_after_answer"]}
    triton = procs.get("tritonserver", {"VmHWM": 0})
    front = procs.get("trilate serve (front end)", {"VmHWM": 0})
    enc = result["encoder_peak_bytes"] or 0
    sampled = result["encoder_answering_peaks_bytes"]
    block = "\n".join([
        start,
        f"Latest `make vl-memory` ({report_name}; {result['machine']['cpu']}, {result['machine']['threads']} threads, "
        f"{result['machine']['memory_bytes'] / 2**30:.0f} GiB): {result['checkpoint']['weights_bytes'] / gb:.2f} GB "
        f"of bf16 weights in {result['checkpoint']['shards']} shards.",
        "",
        "| encoder stub peak | its file-backed (weights) / anonymous peaks | tritonserver peak | front end peak | "
        "all processes, sum of peaks | load | one page: first, again |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {enc / gb:.2f} GB | {sampled['RssFile'] / gb:.2f} / {sampled['RssAnon'] / gb:.2f} GB | "
        f"{triton['VmHWM'] / gb:.2f} GB | {front['VmHWM'] / gb:.2f} GB | "
        f"{result['tree_peak_sum_bytes'] / gb:.2f} GB | {result['load_s']:.0f} s | "
        f"{result['answer_s'][0]:.0f} s, {result['answer_s'][1]:.0f} s ({result['tokens']} tokens) |",
        "",
        f"The encoder read {result['encoder_read_bytes']['answering'][0] / gb:.1f} GB from storage for the first "
        f"answer and {result['encoder_read_bytes']['answering'][1] / gb:.1f} GB for the second; "
        f"{result['machine']['available_bytes'] / gb:.1f} GB of memory was available when it started.",
        end,
    ])
    before, rest = text.split(start, 1)
    readme.write_text(before + block + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to load, and to answer")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--cache", default=None, help="where the checkpoint is cached (default: $TRILATE_CACHE or "
                                                      ".trilate-cache/)")
    parser.add_argument("--tiny", action="store_true", help="the plumbing only: the tiny default sizes, 300 kB shards")
    parser.add_argument("--readme", default=None, help="update this README's vl-memory block with the figures")
    args = parser.parse_args(argv)
    result = run(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"vl-memory{'-tiny' if args.tiny else ''}-{dt.date.today().isoformat()}-{platform.node()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(summary(result)))
    print(f"vl-memory: wrote {path}")
    if args.readme:
        update_readme(Path(args.readme), result, path.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
