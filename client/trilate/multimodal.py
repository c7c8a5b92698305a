"""Structured prompts (OpenAI content parts, chat messages) -> the Triton rows and image bytes of the multimodal
wire contract, and the media resolver that turns an ``image_url`` into image file bytes.

What a prompt may be (``TrilateClient`` calls take a prompt or a list of them):

* ``str``: plain text (vLLM's ``input``, ``text_1``, a string ``ScoreInput``);
* ``{"content": [part, ...]}``: a ``ScoreInput`` content list (``/score`` ``data_*``, ``/rerank`` documents);
* ``{"messages": [{"role": r, "content": str | [part, ...]}, ...]}``: one chat conversation, one output
  (``/pooling`` and ``/v1/embeddings`` chat form; roles are free-form: ``query``, ``document``, ``user`` ...).

A part is ``{"type": "text", "text": str}`` or ``{"type": "image_url", "image_url": {"url": str} | str}``.  On the
wire (``prompt_format=json``) every row is a JSON object with exactly one of ``text`` / ``content`` / ``messages``,
each image part becomes ``{"type": "image"}`` and its bytes go, in order, into that row of the ``images`` BYTES
tensor ``[n, k]`` (``k`` = most images of any row, shorter rows padded with ``b""``).  When every prompt of a call
is a string the rows are plain text and no ``prompt_format`` is sent, exactly as for a text model.

Image URLs (``MediaResolver``): ``data:image/...;base64,`` always; ``http(s)://`` only for hosts in
``--allowed-media-domains``; ``file:`` only under ``--allowed-local-media-path`` (vLLM's flag names); nothing else.
The bytes are not decoded here: the server's image stage decodes them under its own limits.

Not supported: ``image_embeds``, ``video_url``, ``audio_url`` and ``input_audio`` parts (400 naming the part).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from python_backend_models import contract as C
from python_backend_models.errors import InputError
from python_backend_models.media import (
    MediaError,
    MediaLimits,
    MediaPolicy,
    fetch_remote,
    parse_data_url,
    read_local_file,
)

from .errors import InvalidInputError

# The wire contract's names (declared once, in python_backend_models.contract).
IMAGES, QUERY_IMAGES, DOCUMENT_IMAGES = C.IMAGES, C.QUERY_IMAGES, C.DOCUMENT_IMAGES
PARAM_PROMPT_FORMAT = C.PARAM_PROMPT_FORMAT

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

# Image bytes per Triton request: a call with more is split into several requests (rows stay whole).
MAX_REQUEST_IMAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class MediaResolver:
    """``image_url`` -> the image file's bytes, under ``policy`` (which URLs may be loaded) and ``limits`` (how many
    bytes).  The default loads ``data:`` URLs only: nothing is ever fetched or read from disk."""

    policy: MediaPolicy = field(default_factory=MediaPolicy)
    limits: MediaLimits = field(default_factory=MediaLimits)

    def __call__(self, url: str) -> bytes:
        """The bytes; a ``MediaError`` saying what is wrong and the fix (a URL not allowed, bad base64, too large)."""
        if not isinstance(url, str):
            raise MediaError(f"an image URL must be a string, got {type(url).__name__}")
        text = url.strip()
        match = _SCHEME.match(text)
        scheme = match.group(1).lower() if match else ""
        if scheme == "data":
            return parse_data_url(text, self.limits)
        if scheme in ("http", "https"):
            return fetch_remote(text, self.policy, self.limits)
        if scheme == "file":
            return read_local_file(text, self.policy, self.limits)
        if not scheme:
            raise MediaError("the image URL has no scheme; send a data: URL (data:image/png;base64,...)")
        raise MediaError(f"URL scheme {scheme!r} is not allowed for images; use a data: URL (data:image/png;base64,...)")


# -- prompts ---------------------------------------------------------------------------------------------------

def check_text(text: str, what: str) -> str:
    """Text must encode as UTF-8: JSON may carry a lone surrogate ("\\ud800"), which no tokenizer takes."""
    if text.isascii():  # the common case, without building the bytes
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid Unicode text: a lone surrogate U+{ord(text[exc.start]):04X} "
                                f"at character {exc.start}", param=_field(what)) from None
    return text


def _field(where: str) -> str:
    """The request's top-level field of a path like ``data_2[0].content[1]``."""
    return where.split("[", 1)[0].split(".", 1)[0]


def is_structured(prompt: Any) -> bool:
    return isinstance(prompt, Mapping)


def kind_of(prompt: Any) -> str:
    """"text", "content" or "messages" (for a well-formed prompt)."""
    if not is_structured(prompt):
        return "text"
    return "messages" if "messages" in prompt else "content"


def _image_url(part: Mapping[str, Any], where: str) -> str:
    value = part.get("image_url")
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str):
        raise InvalidInputError(f"{where} is an image_url part without a string url "
                                '({"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}})',
                                param=_field(where))
    return value


def _objects(items: Any, where: str, key: str, what: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(path, item)`` for a list whose items must each be an object with a string ``key``."""
    if not isinstance(items, (list, tuple)):
        raise InvalidInputError(f"{where} must be a list of {what}", param=_field(where))
    for j, item in enumerate(items):
        at = f"{where}[{j}]"
        if not isinstance(item, Mapping) or not isinstance(item.get(key), str):
            raise InvalidInputError(f"{at} must be an object with a string {key!r}", param=_field(at))
        yield at, item


def _parts(parts: Any, where: str, resolve: MediaResolver) -> tuple[list[dict[str, Any]], list[bytes]]:
    """OpenAI content parts -> the wire's parts (``text`` kept, ``image_url`` -> ``{"type": "image"}``) and the
    images' bytes in order."""
    out: list[dict[str, Any]] = []
    images: list[bytes] = []
    for at, part in _objects(parts, where, "type", "content parts"):
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidInputError(f"{at} is a text part without a string 'text'", param=_field(at))
            out.append({"type": "text", "text": check_text(part["text"], at)})
        elif kind == "image_url":
            url = _image_url(part, at)
            try:
                images.append(resolve(url))
            except (MediaError, InputError) as exc:
                raise InvalidInputError(f"{at}: {exc}", param=_field(at)) from None
            out.append({"type": "image"})
        else:
            raise InvalidInputError(f"{at} has the unsupported content type {kind!r}; use text or image_url",
                                    param=_field(at))
    return out, images


def _messages(messages: Any, where: str, resolve: MediaResolver) -> tuple[list[dict[str, Any]], list[bytes]]:
    if isinstance(messages, (list, tuple)) and not messages:
        raise InvalidInputError(f"{where} must not be empty: give one chat conversation", param=_field(where))
    out: list[dict[str, Any]] = []
    images: list[bytes] = []
    for at, message in _objects(messages, where, "role", "chat messages"):
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": check_text(content, f"{at}.content")})
            continue
        parts, found = _parts(content, f"{at}.content", resolve)
        out.append({"role": message["role"], "content": parts})
        images.extend(found)
    return out, images


def wire_prompt(prompt: Any, where: str, resolve: MediaResolver) -> tuple[dict[str, Any], list[bytes]]:
    """One prompt -> its wire row object (``{"text"}``, ``{"content"}`` or ``{"messages"}``) and image bytes.

    ``where`` names the prompt in errors (``data_2[0]``, ``messages``): a bad part is ``data_2[0].content[1]``.
    """
    if isinstance(prompt, str):
        if prompt == "":
            raise InvalidInputError(f"{where} is an empty string", param=_field(where))
        return {"text": check_text(prompt, where)}, []
    if not is_structured(prompt):
        raise InvalidInputError(f"{where} must be a string or a {{'content': [...]}} object, got "
                                f"{type(prompt).__name__}", param=_field(where))
    keys = [k for k in ("content", "messages") if k in prompt]
    if len(keys) != 1:
        raise InvalidInputError(f"{where} must have exactly one of 'content' (content parts) or 'messages' (a chat "
                                "conversation)", param=_field(where))
    if keys[0] == "content":
        parts, images = _parts(prompt["content"], f"{where}.content", resolve)
        if not parts:
            raise InvalidInputError(f"{where}.content is empty; give at least one text or image_url part",
                                    param=_field(where))
        return {"content": parts}, images
    # REST's `messages` field is the conversation itself: its parts are messages[0].content[1], not ...messages[0]
    at = where if where == "messages" else f"{where}.messages"
    messages, images = _messages(prompt["messages"], at, resolve)
    return {"messages": messages}, images


@dataclass
class WireSide:
    """A list of prompts as rows for one Triton STRING input, plus their images for the paired BYTES input."""

    objects: list[dict[str, Any]]
    images: list[list[bytes]]
    prompts: list[Any]  # as given (the rerank echo of multi_modal)

    @property
    def structured(self) -> bool:
        return any(is_structured(p) for p in self.prompts)

    def __len__(self) -> int:
        return len(self.objects)

    def text_tensor(self, as_json: bool, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """``[n, 1]`` object array of UTF-8 rows: the JSON objects (``prompt_format=json``) or the plain texts."""
        rows = self.objects[lo:hi]
        if as_json:
            return np.array([[json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode("utf-8")] for o in rows],
                            dtype=object)
        return np.array([[o["text"].encode("utf-8")] for o in rows], dtype=object)

    def image_tensor(self, lo: int = 0, hi: int | None = None) -> np.ndarray | None:
        """``[n, k]`` object array of image bytes (rows padded with ``b""``), or None when these rows have none."""
        rows = self.images[lo:hi]
        k = max((len(r) for r in rows), default=0)
        if k == 0:
            return None
        out = np.full((len(rows), k), b"", dtype=object)
        for i, row in enumerate(rows):
            for j, data in enumerate(row):
                out[i, j] = data
        return out

    def image_bytes(self, i: int) -> int:
        return sum(len(b) for b in self.images[i])


def wire_side(prompts: Sequence[Any], names: Sequence[str], resolve: MediaResolver) -> WireSide:
    """Prompts (each named in errors by ``names[i]``) -> a ``WireSide``."""
    objects, images = [], []
    for prompt, where in zip(prompts, names):
        obj, found = wire_prompt(prompt, where, resolve)
        objects.append(obj)
        images.append(found)
    return WireSide(objects, images, list(prompts))


def chunks(n: int, size: int, cost: Callable[[int], int] = lambda i: 0, max_image_bytes: int | None = None):
    """``(lo, hi)`` ranges over ``n`` rows: at most ``size`` rows and (unless one row alone is larger)
    ``max_image_bytes`` (default ``MAX_REQUEST_IMAGE_BYTES``) of ``cost(row)`` image bytes each; one Triton
    request per range."""
    if max_image_bytes is None:
        max_image_bytes = MAX_REQUEST_IMAGE_BYTES
    lo = 0
    while lo < n:
        hi, total = lo, 0
        while hi < n and hi - lo < size:
            c = cost(hi)
            if hi > lo and total + c > max_image_bytes:
                break
            total += c
            hi += 1
        yield lo, hi
        lo = hi


# -- command line ---------------------------------------------------------------------------------------------

def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    """vLLM's media flags: which image URLs the front end may load for image models."""
    parser.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                        help="hosts whose http(s) image URLs may be fetched (exact names); default: none, only "
                             "data: URLs")
    parser.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                        help="directory whose files file: image URLs may name (after resolving .. and symlinks); "
                             "default: no file: URLs")


def media_from_args(args: argparse.Namespace) -> MediaResolver:
    root = args.allowed_local_media_path
    if root is not None and not Path(root).is_dir():
        raise SystemExit(f"error: --allowed-local-media-path {root!r} is not a directory")
    domains = tuple(d.strip().lower() for d in (args.allowed_media_domains or ()) if d.strip())
    return MediaResolver(MediaPolicy(allowed_media_domains=domains,
                                     allowed_local_media_path=None if root is None else Path(root).resolve()))
