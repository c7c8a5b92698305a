"""The seed document's curl commands for the image models, verbatim, through ``trilate serve`` over REST.

One ``trilate serve`` serves the tiny checkpoints under the seed's names: TomoroAI's ColQwen3 layout as
``TomoroAI/tomoro-colqwen3-embed-4b``, the ColQwen3.5 layout as ``athrael-soju/colqwen3.5-4.5B``, and the Llama
Nemotron VL embed and rerank layouts as ``nvidia/llama-nemotron-{embed,rerank}-vl-1b-v2`` with the seed's serve
flags (``--runner pooling --trust-remote-code --chat-template PATH``; the template files are trilate's own, written
out, as the seed points at vLLM's).  Each command
runs with bash and curl as the document writes it; only the port is this server's and each ``<BASE64>`` is a
generated PNG page.  Numbers are checked against ``references.colqwen_token_embeddings`` (transformers' own
models, transformers' PIL image processor) and ``references.NemotronReference`` (transformers' SigLIP and Llama).
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import references
from tolerances import SCORE_ATOL, SCORE_RTOL, VECTOR_ATOL
from trilate.launch import ServeProcess

pytestmark = pytest.mark.server

SEED_DATA = Path(__file__).resolve().parent / "data" / "seed_commands.json"
TOMORO = "TomoroAI/tomoro-colqwen3-embed-4b"
COLQWEN35 = "athrael-soju/colqwen3.5-4.5B"
NEMOTRON_EMBED = "nvidia/llama-nemotron-embed-vl-1b-v2"
NEMOTRON_RERANK = "nvidia/llama-nemotron-rerank-vl-1b-v2"
ONE_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# Seed model -> (fixture, bidirectional attention).
SERVED = {TOMORO: ("colqwen3_tomoro", False), COLQWEN35: ("colqwen35", True),
          NEMOTRON_EMBED: ("nemotron_embed", None), NEMOTRON_RERANK: ("nemotron_rerank", None)}


def page(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.RandomState(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y + 40 * seed) % 256], axis=-1)
    return Image.fromarray(np.clip(rgb + rng.randint(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))


# <BASE64>, <BASE64_1>, <BASE64_2> of the seed's commands -> these pages.
PAGES = {"<BASE64>": page(1), "<BASE64_1>": page(2, (64, 96)), "<BASE64_2>": page(3, (128, 64))}


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def seed_commands() -> list[tuple[str, str, str, dict]]:
    data = json.loads(SEED_DATA.read_text(encoding="utf-8"))
    return [(c["key"], c["command"], c["route"], c["body"]) for c in data["curl_commands"]
            if c["body"]["model"] in SERVED]


COMMANDS = seed_commands()


@pytest.fixture(scope="module")
def vl_server(tmp_path_factory, colqwen3_tomoro, colqwen35, nemotron_embed, nemotron_rerank):
    from python_backend_models import chat_templates

    root = tmp_path_factory.mktemp("vl")
    templates = []
    for name, file in ((chat_templates.NEMOTRON_EMBED, "nemotron_embed_vl.jinja"),
                       (chat_templates.NEMOTRON_RERANK, "nemotron-vl-rerank.jinja")):
        (root / file).write_text(chat_templates.bundled(name).source, encoding="utf-8")
        templates += ["--chat-template", str(root / file)]
    server = ServeProcess(
        [str(colqwen3_tomoro), str(colqwen35), str(nemotron_embed), str(nemotron_rerank),
         "--served-model-name", TOMORO, COLQWEN35, NEMOTRON_EMBED, NEMOTRON_RERANK,
         # The seed's flags for the Nemotron models; '' keeps the ColQwen models' own templates.
         "--runner", "pooling", "--trust-remote-code", "--chat-template", "", "--chat-template", "", *templates,
         "--model-repository", str(root / "repo"), "--uvicorn-log-level", "warning"],
        timeout=600, env={"HF_HUB_OFFLINE": "1"},
    )
    yield server
    assert server.stop() == 0, "".join(server.lines[-30:])


def with_pages(text: str) -> str:
    for marker, image in PAGES.items():
        text = text.replace(marker, b64(image))
    return text


def run(command: str, port: int) -> dict:
    command = with_pages(command)
    out = subprocess.run(["bash", "-c", command.replace("localhost:8000", f"localhost:{port}")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _prompt(item) -> tuple[str, list[Image.Image]]:
    """A seed ScoreInput as the prompt vLLM (>= 0.21) builds for /score and /rerank, and its images."""
    if isinstance(item, str):
        return item, []
    texts, images = [], []
    for part in item["content"]:
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            marker = part["image_url"]["url"].removeprefix("data:image/png;base64,")
            images.append(PAGES[marker])
    return ONE_IMAGE * len(images) + "\n".join(texts), images


def _maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q @ d.T).max(axis=1).sum())


def test_every_seed_command_of_these_models_is_here():
    routes = sorted((body["model"], route) for _key, _cmd, route, body in COMMANDS)
    assert routes == sorted([(TOMORO, r) for r in ("/rerank", "/score", "/score", "/rerank", "/pooling", "/pooling")]
                            + [(COLQWEN35, "/rerank"), (COLQWEN35, "/score"), (NEMOTRON_EMBED, "/v1/embeddings"),
                               (NEMOTRON_EMBED, "/v1/embeddings"), (NEMOTRON_RERANK, "/score"),
                               (NEMOTRON_RERANK, "/rerank")])


@pytest.mark.parametrize("key, command, route, body", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_seed_curl_command_verbatim(request, vl_server, key, command, route, body):
    model = body["model"]
    fixture, bidi = SERVED[model]
    path = request.getfixturevalue(fixture)
    if model in (NEMOTRON_EMBED, NEMOTRON_RERANK):
        return check_nemotron(run(command, vl_server.port), path, route, body)

    def vectors(item) -> np.ndarray:
        text, images = _prompt(item)
        return references.colqwen_token_embeddings(path, text, images, bidirectional=bidi)

    got = run(command, vl_server.port)
    assert got["model"] == model, got
    if route in ("/score", "/rerank"):
        query = body.get("data_1", body.get("text_1", body.get("query")))
        docs = body.get("data_2", body.get("text_2", body.get("documents")))
        q = vectors(query)
        expected = [_maxsim(q, vectors(d)) for d in docs]
        if route == "/score":
            assert re.fullmatch(r"score-[0-9a-f]{32}", got["id"])
            assert [item["index"] for item in got["data"]] == list(range(len(docs)))
            assert [item["score"] for item in got["data"]] == pytest.approx(expected, rel=SCORE_RTOL, abs=SCORE_ATOL)
        else:
            assert re.fullmatch(r"rerank-[0-9a-f]{32}", got["id"])
            order = sorted(range(len(docs)), key=lambda i: -expected[i])[: body.get("top_n") or len(docs)]
            assert [r["index"] for r in got["results"]] == order
            for r in got["results"]:
                doc = docs[r["index"]]
                assert r["relevance_score"] == pytest.approx(expected[r["index"]], rel=SCORE_RTOL, abs=SCORE_ATOL)
                sent = json.loads(with_pages(json.dumps(doc)))  # the document as the command sent it
                echo = {"text": doc, "multi_modal": None} if isinstance(doc, str) else {"text": None,
                                                                                      "multi_modal": sent["content"]}
                assert r["document"] == echo
        n_pairs = len(docs)
        tokens = sum(len(vectors(d)) for d in docs) + n_pairs * len(q) + n_pairs  # + a pad token per pair
        assert got["usage"]["prompt_tokens"] == tokens
    elif route == "/pooling":
        assert re.fullmatch(r"pool-[0-9a-f]{32}", got["id"])
        if "messages" in body:
            (message,) = body["messages"]
            text, images = _prompt({"content": message["content"]})
            prompt = f"<|im_start|>{message['role']}\n{text}<|im_end|>\n"  # Qwen3-VL's chat template
            ref = references.colqwen_token_embeddings(path, prompt, images, bidirectional=bidi)
        else:
            ref = vectors(body["input"])
        (item,) = got["data"]
        data = np.asarray(item["data"], dtype=np.float32)
        assert data.shape == ref.shape
        np.testing.assert_allclose(data, ref, atol=VECTOR_ATOL)
        assert got["usage"]["prompt_tokens"] == ref.shape[0]
    else:  # pragma: no cover - a new kind of command in the seed
        pytest.fail(f"no checks written for {route}")


def _nemotron_content(item) -> tuple[str, list[Image.Image]]:
    """A seed ScoreInput as the rerank template's document text (every image its "<image>"), and its images."""
    if isinstance(item, str):
        return item, []
    texts = [p["text"] for p in item["content"] if p["type"] == "text"]
    images = [PAGES[p["image_url"]["url"].removeprefix("data:image/png;base64,")] for p in item["content"]
              if p["type"] == "image_url"]
    return "\n".join(texts), images


def check_nemotron(got: dict, path: Path, route: str, body: dict) -> None:
    """The Nemotron VL seed commands against transformers' SiglipVisionModel + LlamaModel (NemotronReference)."""
    ref = references.NemotronReference(path)
    assert got["model"] == body["model"], got
    if route == "/v1/embeddings":
        (message,) = body["messages"]
        text, images = _nemotron_content({"content": message["content"]})
        prefix = {"query": "query: ", "document": "passage: "}[message["role"]]
        prompt = "<|begin_of_text|>" + prefix + "<image> " * len(images) + text  # vllm_semantics §7.1
        ids, mask, pixels = references.nemotron_inputs(path, [prompt], [images], add_special_tokens=False)
        want = ref.pooled(ids, mask, pixels)[0]
        (item,) = got["data"]
        assert item["object"] == "embedding" and item["index"] == 0
        np.testing.assert_allclose(item["embedding"], (want / want.norm()).numpy(), atol=VECTOR_ATOL)
        assert got["usage"]["prompt_tokens"] == int(mask.sum())
        return
    query = body.get("data_1", body.get("query"))
    docs = body.get("data_2", body.get("documents"))
    prompts, images = [], []
    for doc in docs:
        text, doc_images = _nemotron_content(doc)
        prompts.append(("<image> " if doc_images else "") + f"question:{query} \n \n passage:{text}")  # §7.2
        images.append(doc_images)
    ids, mask, pixels = references.nemotron_inputs(path, prompts, images, add_special_tokens=True)
    scores = list(torch_sigmoid(ref.logits(ids, mask, pixels)))
    assert got["usage"]["prompt_tokens"] == int(mask.sum())
    if route == "/score":
        assert [d["score"] for d in got["data"]] == pytest.approx(scores, rel=SCORE_RTOL, abs=SCORE_ATOL)
    else:
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[: body.get("top_n") or len(docs)]
        assert [r["index"] for r in got["results"]] == order
        for r in got["results"]:
            assert r["relevance_score"] == pytest.approx(scores[r["index"]], rel=SCORE_RTOL, abs=SCORE_ATOL)
            sent = json.loads(with_pages(json.dumps(docs[r["index"]])))
            assert r["document"] == {"text": None, "multi_modal": sent["content"]}


def torch_sigmoid(logits) -> list[float]:
    return [float(1 / (1 + np.exp(-float(x)))) for x in logits]


def test_nemotron_pooling_and_tokenize_over_rest(vl_server, nemotron_embed):
    """The routes the seed does not spell out for Nemotron VL: /pooling with messages (task embed, and the
    SEED default token_embed: per-token vectors), /tokenize."""
    import httpx

    ref = references.NemotronReference(nemotron_embed)
    message = {"role": "document", "content": [{"type": "image_url",
                                                "image_url": {"url": "data:image/png;base64," + b64(PAGES["<BASE64>"])}},
                                               {"type": "text", "text": "A page."}]}
    prompt = "<|begin_of_text|>passage: <image> A page."
    ids, mask, pixels = references.nemotron_inputs(nemotron_embed, [prompt], [[PAGES["<BASE64>"]]],
                                                   add_special_tokens=False)
    pooled = ref.pooled(ids, mask, pixels)[0]
    tokens = ref.hidden(ids, mask, pixels)[0]
    with httpx.Client(base_url=vl_server.rest_url, timeout=120) as http:
        embed = http.post("/pooling", json={"model": NEMOTRON_EMBED, "messages": [message], "task": "embed"}).json()
        np.testing.assert_allclose(embed["data"][0]["data"], (pooled / pooled.norm()).numpy(), atol=VECTOR_ATOL)
        per_token = http.post("/pooling", json={"model": NEMOTRON_EMBED, "messages": [message]}).json()
        data = np.asarray(per_token["data"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(data, (tokens / tokens.norm(dim=-1, keepdim=True)).numpy(), atol=VECTOR_ATOL)
        assert per_token["usage"]["prompt_tokens"] == int(mask.sum())
        tok = http.post("/tokenize", json={"model": NEMOTRON_EMBED, "prompt": "query: hello"}).json()
        assert tok["count"] == len(tok["tokens"]) and tok["tokens"][0] == int(ids[0, 0])  # BOS first


def _png_url(size, mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _odd_bodies() -> list[tuple[str, dict]]:
    """Odd images and prompts for every image model (a one-pixel image, extreme aspect ratios, alpha, 16-bit grey,
    empty data, two images where the template takes one, placeholders spelt in text, ...)."""
    def image(url):
        return {"type": "image_url", "image_url": {"url": url}}

    urls = [_png_url((1, 1)), _png_url((1, 3000)), _png_url((300, 300), "RGBA"), _png_url((8, 8), "I;16"),
            "data:image/png;base64,", "data:,"]
    out = []
    for model in SERVED:
        for url in urls:
            out += [("/score", {"model": model, "data_1": "q", "data_2": [{"content": [image(url), image(url)]}]}),
                    ("/pooling", {"model": model, "messages": [{"role": "document", "content": [image(url)]}]})]
        out += [("/score", {"model": model, "text_1": ONE_IMAGE, "text_2": ["<image>", "<IMG_CONTEXT>"]}),
                ("/pooling", {"model": model, "messages": [{"role": "user", "content": None}]}),
                ("/pooling", {"model": model, "messages": [{"role": 3, "content": "x"}]}),
                ("/rerank", {"model": model, "query": {"content": [image(_png_url((30, 30)))]}, "documents": ["d"]}),
                ("/pooling", {"model": model, "messages": [{"role": "user", "content": [
                    image(_png_url((64, 64))), {"type": "text", "text": "x"}]}], "truncate_prompt_tokens": 3})]
    return out


def test_odd_image_requests_never_get_a_5xx_and_the_server_keeps_serving(vl_server):
    import httpx

    with httpx.Client(base_url=vl_server.rest_url, timeout=300) as http:
        for route, body in _odd_bodies():
            resp = http.post(route, json=body)
            assert resp.status_code < 500, (route, json.dumps(body)[:300], resp.text[:300])
        assert http.post("/score", json={"model": TOMORO, "data_1": "q", "data_2": ["d"]}).status_code == 200
