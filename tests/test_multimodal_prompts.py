"""The image models' prompt rendering (python_backend_models.multimodal), in process on the tiny ColQwen3.5
checkpoint: the rows a request may hold, the layouts vLLM builds, chat templates with their keyword variables,
and the errors that name what is wrong."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from python_backend_models.chat_templates import ChatTemplate
from python_backend_models.checkpoint import open_checkpoint
from python_backend_models.errors import InputError
from python_backend_models.registry import describe, family_of


@pytest.fixture(scope="module")
def pre(colqwen35):
    info = describe(open_checkpoint(colqwen35), "m")
    return family_of(info).preprocessor(info)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def decoded(pre, encoded, row: int = 0) -> str:
    n = int(encoded.prompt_tokens[row])
    return pre.tokenizer.decode(encoded.input_ids[row, :n].tolist(), skip_special_tokens=False)


def test_a_content_item_puts_the_image_in_front_of_the_text_with_nothing_between(pre):
    row = json.dumps({"content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]})
    done = pre.encode([row], [[png()]], prompt_format="json")
    text = decoded(pre, done.encoded)
    pads = "<|image_pad|>" * 4  # 64x64 -> (64/32)^2 merged patches
    assert text == f"<|vision_start|>{pads}<|vision_end|>a\nb"
    assert done.image_sizes[0].tolist() == [[1, 4, 4]] and done.pixel_values[0].shape == (16, 1536)


def test_chat_template_kwargs_reach_the_template(pre, monkeypatch):
    monkeypatch.setattr(pre, "chat_template", ChatTemplate.from_string(
        "{{ greeting }}:{% for m in messages %}{{ m['content'] }}{% endfor %}"))
    row = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    done = pre.encode([row], [[]], prompt_format="json", chat_template_kwargs={"greeting": "hello"})
    assert decoded(pre, done.encoded) == "hello:hi"


@pytest.mark.parametrize("row, images, words", [
    ("not json", [], "is not a JSON object"),
    (json.dumps({"text": "a", "content": []}), [], "exactly one of the keys"),
    (json.dumps({"content": [{"type": "video_url"}]}), [], "unsupported content type 'video_url'"),
    (json.dumps({"content": [{"type": "image"}]}), [], "1 image part(s) but 0 image(s)"),
    (json.dumps({"text": "x <|image_pad|> y"}), [], "spells the image placeholder"),
    (json.dumps({"messages": []}), [], "'messages' is empty"),
])
def test_bad_rows_are_input_errors_naming_what_is_wrong(pre, row, images, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        pre.encode([row], [images], prompt_format="json")


def test_plain_rows_stay_plain_text(pre):
    done = pre.encode(['{"text": "not parsed"}'], [[]])  # no prompt_format: the row is the text itself
    assert decoded(pre, done.encoded) == '{"text": "not parsed"}'
    assert np.all(done.encoded.output_mask[0, : done.encoded.prompt_tokens[0]])
