"""Prompts with images -> token ids + pixel tensors (the preprocess stage of the image models; no torch).

What a request row may be (``prompt_format``, the wire contract in ``contract.py``):

* plain text (no ``prompt_format``, or ``"text"``): tokenised as text models do (vLLM's ``input``);
* with ``prompt_format: "json"``, a JSON object with one key:
  ``{"text": str}`` — plain text;
  ``{"content": [part, ...]}`` — a ``/score`` / ``/rerank`` item: every image contributes the family's
  placeholder, all placeholders in front of the text parts (joined with ``"\\n"``), with ``""`` between them as
  vLLM does since v0.21 (PR #38617; "\\n" before);
  ``{"messages": [...]}`` — chat-style: rendered with the chat template (``add_generation_prompt`` false).
  A part is ``{"type": "text", "text": str}`` or ``{"type": "image"}``; the image's bytes are the row's next
  element of the ``images`` tensor.

Each image is decoded under ``media.MediaLimits``, processed by the family's :class:`ImageLayout` (Qwen-VL patches
and grid; Nemotron VL tiles), and its placeholder in the prompt text is expanded to the number of image tokens the
vision tower will fill.  After tokenising, the count of image-token ids must equal what the images fill, so a
text that spells a placeholder itself, or a truncation that cuts one, is an error of that request only.

Outputs per row (``MultimodalEncoded``): the text encoding (``tokenization.Encoded``) plus ``pixel_values``
(float32, family shape, zero rows for a text-only prompt) and ``image_sizes`` (int64: Qwen-VL ``(n_images, 3)``
grids, Nemotron ``(n_images,)`` tile counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .chat_templates import ChatTemplate, content_parts, string_content, template_messages
from .checkpoint import CheckpointError, read_json_if_exists
from .errors import InputError
from .media import MediaLimits, decode_image
from .tokenization import Encoded, TextPreprocessor

PROMPT_KINDS = ("text", "content", "messages")


@dataclass(frozen=True)
class Prompt:
    """One parsed row: ``kind`` in PROMPT_KINDS; ``value`` the text, the part list or the message list."""

    kind: str
    value: Any


def parse_prompt(raw: str, prompt_format: str | None, row: int) -> Prompt:
    """One row of the ``text`` tensor, read per ``prompt_format`` (None / "text" / "json")."""
    if prompt_format in (None, "", "text"):
        return Prompt("text", raw)
    if prompt_format != "json":
        raise InputError(f"prompt_format must be 'text' or 'json', got {prompt_format!r}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"input {row} is not a JSON object (prompt_format json): {exc}") from None
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in PROMPT_KINDS:
        raise InputError(f"input {row} must be a JSON object with exactly one of the keys {list(PROMPT_KINDS)}")
    kind, value = next(iter(data.items()))
    if kind == "text" and not isinstance(value, str):
        raise InputError(f"input {row}: 'text' must be a string")
    if kind in ("content", "messages") and not isinstance(value, list):
        raise InputError(f"input {row}: {kind!r} must be a list")
    if kind == "messages" and not value:
        raise InputError(f"input {row}: 'messages' is empty")
    return Prompt(kind, value)


@dataclass(frozen=True)
class ProcessedImage:
    pixel_values: np.ndarray  # float32, the family's per-image rows (patches or tiles)
    size: np.ndarray  # int64: (3,) grid (t, h, w) or () tile count
    tokens: int  # image-token ids the vision tower fills for it


class ImageLayout:
    """What one image family does to prompts and pixels.  Subclasses: :class:`QwenVLLayout`, ``NemotronVLLayout``."""

    placeholder: str  # an image in a rendered prompt (before expansion)
    pad: str  # the token string the expansion repeats (its id is ``image_token_id``)
    image_token_id: int
    pixel_shape: tuple[int, ...]  # trailing shape of pixel_values rows
    size_shape: tuple[int, ...]  # shape of one image's size entry

    def process(self, image) -> ProcessedImage:
        raise NotImplementedError

    def expand(self, prompt: str, images: Sequence[ProcessedImage]) -> str:
        """``prompt`` with its placeholders, in order, replaced by each image's token string."""
        raise NotImplementedError

    def counts(self, sizes: np.ndarray) -> tuple[int, int]:
        """(pixel rows, image tokens) that images of these ``sizes`` (one entry per image) take."""
        raise NotImplementedError

    def check_row(self, input_ids: np.ndarray, pixel_values: np.ndarray, sizes: np.ndarray) -> None:
        """Refuse one row whose ids, pixels and sizes do not fit together (``InputError``), before it can share a
        forward pass with other requests' rows."""
        rows, tokens = self.counts(sizes)
        found = int((np.asarray(input_ids) == self.image_token_id).sum())
        if pixel_values.shape[0] != rows or found != tokens:
            raise InputError(f"the row's {found} image tokens and {pixel_values.shape[0]} pixel rows do not match its "
                             f"image sizes {sizes.tolist()} ({tokens} tokens, {rows} rows)")


class QwenVLLayout(ImageLayout):
    """Qwen3-VL / Qwen3.5: ``<|vision_start|><|image_pad|><|vision_end|>``, the pad expanded to one id per merged
    2x2 patch; pixels are patch rows ``(patches, C*T*P*P)`` with grids ``(1, h, w)``."""

    def __init__(self, path: Path, image_token_id: int):
        from .qwen_vl_images import QwenVLImageConfig

        self.config = QwenVLImageConfig.from_checkpoint(path)
        self.image_token_id = image_token_id
        self.pad = "<|image_pad|>"
        self.placeholder = "<|vision_start|>" + self.pad + "<|vision_end|>"
        self.pixel_shape = (self.config.patch_dim,)
        self.size_shape = (3,)

    def process(self, image) -> ProcessedImage:
        from .qwen_vl_images import preprocess_image

        done = preprocess_image(image, self.config)
        return ProcessedImage(done.pixel_values, done.image_grid_thw.reshape(3), done.num_placeholders)

    def counts(self, sizes):
        if sizes.size and (sizes < 1).any():
            raise InputError(f"image sizes must be positive, got {sizes.tolist()}")
        patches = int(np.prod(sizes, axis=-1).sum()) if sizes.size else 0
        return patches, patches // self.config.merge_size**2

    def expand(self, prompt, images):
        pieces = prompt.split(self.pad)
        if len(pieces) - 1 != len(images):
            raise InputError(f"the prompt holds {len(pieces) - 1} {self.pad} placeholder(s) but {len(images)} "
                             "image(s) came with it")
        out = [pieces[0]]
        for image, piece in zip(images, pieces[1:]):
            out += [self.pad * image.tokens, piece]
        return "".join(out)


@dataclass
class MultimodalEncoded:
    encoded: Encoded
    pixel_values: list[np.ndarray]  # per row: (rows, *layout.pixel_shape) float32
    image_sizes: list[np.ndarray]  # per row: (n_images, *layout.size_shape) int64


def chat_template_for(path: Path, explicit: str | None, default: ChatTemplate | None = None) -> ChatTemplate | None:
    """The template ``messages`` are rendered with: ``--chat-template`` (``explicit``: its source, as the card
    carries it), else the family's own (``default``), else the checkpoint's ``chat_template.jinja``,
    ``chat_template.json`` or tokenizer_config.json."""
    from . import chat_templates

    if explicit:
        return ChatTemplate.from_string(explicit, name="--chat-template")
    if default is not None:
        return default
    if (path / "chat_template.jinja").is_file():
        return chat_templates.load(path / "chat_template.jinja")
    for name in ("chat_template.json", "tokenizer_config.json"):
        source = (read_json_if_exists(path / name) or {}).get("chat_template")
        if isinstance(source, str):
            return ChatTemplate.from_string(source, name=f"{path.name}/{name}")
    return None


def _token_text(path: Path, key: str) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        value = (read_json_if_exists(path / name) or {}).get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return ""


class MultimodalPreprocessor:
    """Rows (text or JSON prompts) + their encoded images -> ``MultimodalEncoded``.  Not thread-safe."""

    def __init__(self, path: Path, max_model_len: int, layout: ImageLayout, *, chat_template: ChatTemplate | None,
                 limits: MediaLimits = MediaLimits(), placeholder_separator: str = "",
                 colpali_family: str | None = None):
        self.text = TextPreprocessor(path, max_model_len)
        self.colpali_family = colpali_family  # a family with colpali-engine conventions (embedding_mode)
        self.tokenizer = self.text.tokenizer
        self.layout = layout
        self.chat_template = chat_template
        self.limits = limits
        self.placeholder_separator = placeholder_separator
        self.bos_token = _token_text(path, "bos_token")
        self.eos_token = _token_text(path, "eos_token")
        if self.tokenizer.token_to_id(layout.pad) != layout.image_token_id:
            raise CheckpointError(f"{path}: the tokenizer's id for {layout.pad!r} is "
                                  f"{self.tokenizer.token_to_id(layout.pad)}, config.json says {layout.image_token_id}")

    # -- prompts -------------------------------------------------------------------------------------
    def render(self, prompt: Prompt, row: int, chat_template_kwargs: Mapping[str, Any] | None = None,
               mode: str | None = None) -> tuple[str, int]:
        """(prompt text with one placeholder per image, number of images).  ``mode`` ("query" | "document"):
        colpali-engine's conventions (``colpali_modes``) instead of vLLM's layout, where the family has them."""
        if mode is not None:
            return self._colpali(prompt, row, mode)
        if prompt.kind == "text":
            return prompt.value, 0
        if prompt.kind == "content":  # placeholders in front of the text, as vLLM's score items
            return string_content(prompt.value, f"input {row}: content", image_placeholder=self.layout.placeholder,
                                  placeholder_separator=self.placeholder_separator)
        if self.chat_template is None:
            raise InputError("this model has no chat template for 'messages'; start the server with "
                             "--chat-template PATH")
        messages, n = template_messages(prompt.value, self.chat_template.content_format,
                                        image_placeholder=self.layout.placeholder,
                                        placeholder_separator=self.placeholder_separator)
        text = self.chat_template.render(messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                         add_generation_prompt=False, **dict(chat_template_kwargs or {}))
        return text, n

    def _colpali(self, prompt: Prompt, row: int, mode: str) -> tuple[str, int]:
        from . import colpali_modes

        if self.colpali_family is None:
            raise InputError("embedding_mode is not available for this model: its queries and documents are "
                             "encoded alike")
        if mode not in ("query", "document"):
            raise InputError(f"embedding_mode must be one of ['query', 'document'], got {mode!r}")
        if prompt.kind == "messages":
            raise InputError(f"input {row}: embedding_mode takes texts and content lists, not messages")
        if prompt.kind == "text":
            texts, n = [prompt.value], 0
        else:
            texts, n = content_parts(prompt.value, f"input {row}: content")
        if mode == "query":
            if n:
                raise InputError(f"input {row}: a query (embedding_mode 'query') is text; it holds {n} image(s)")
            return colpali_modes.query_prompt("\n".join(texts), self.colpali_family), 0
        return colpali_modes.document_prompt(texts, n, self.colpali_family), n

    def render_pair(self, query: Prompt, document: Prompt, row: int, query_images: int) -> tuple[str, int]:
        """A cross-encoder's pair prompt: the template over ``[{"role": "query"}, {"role": "document"}]``."""
        if query_images:
            raise InputError(f"pair {row}: the query holds an image; a rerank query must be text (images go in "
                             "the documents)")
        if self.chat_template is None:
            raise InputError("this cross-encoder has no score template; start the server with --chat-template PATH")
        messages = []
        for role, prompt in (("query", query), ("document", document)):
            if prompt.kind == "messages":
                raise InputError(f"pair {row}: a {role} must be a text or a content list, not messages")
            messages.append({"role": role, "content": prompt.value})
        rendered, n = template_messages(messages, self.chat_template.content_format,
                                        image_placeholder=self.layout.placeholder,
                                        placeholder_separator=self.placeholder_separator)
        return self.chat_template.render(rendered, bos_token=self.bos_token, eos_token=self.eos_token), n

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str], query_images: Sequence[Sequence[bytes]],
                     document_images: Sequence[Sequence[bytes]], *, prompt_format: str | None = None,
                     truncate_prompt_tokens: int | None = None) -> MultimodalEncoded:
        """Pair ``i`` = (queries[i], documents[i]) as one prompt each, tokenised with special tokens."""
        if len(queries) != len(documents):
            raise InputError(f"a cross-encoder scores pairs: {len(queries)} queries but {len(documents)} documents "
                             "(send equal counts; the client expands 1:N)")
        texts, files = [], []
        for i, (q, d) in enumerate(zip(queries, documents)):
            q_files = _files(query_images, i)
            text, n = self.render_pair(parse_prompt(q, prompt_format, i), parse_prompt(d, prompt_format, i), i,
                                       len(q_files))
            texts.append(text)
            files.append(_files(document_images, i))
            if len(files[-1]) != n:
                raise InputError(f"document {i} has {n} image part(s) but {len(files[-1])} image(s) came with it")
        return self._encode_texts(texts, files, truncate_prompt_tokens=truncate_prompt_tokens, truncation_side="right",
                                  add_special_tokens=True, purpose="score")

    def encode(self, rows: Sequence[str], images: Sequence[Sequence[bytes]], *, prompt_format: str | None = None,
               truncate_prompt_tokens: int | None = None, truncation_side: str = "right",
               add_special_tokens: bool = True, purpose: str = "embedding",
               chat_template_kwargs: Mapping[str, Any] | None = None, mode: str | None = None) -> MultimodalEncoded:
        """``images[i]``: row i's encoded image files, in placeholder order (empty elements are padding);
        ``mode``: ``embedding_mode`` (colpali-engine's query / document conventions)."""
        texts, files = [], []
        for i, raw in enumerate(rows):
            text, n = self.render(parse_prompt(raw, prompt_format, i), i, chat_template_kwargs, mode)
            texts.append(text)
            files.append(_files(images, i))
            if len(files[-1]) != n:
                raise InputError(f"input {i} has {n} image part(s) but {len(files[-1])} image(s) came with it")
        return self._encode_texts(texts, files, truncate_prompt_tokens=truncate_prompt_tokens,
                                  truncation_side=truncation_side, add_special_tokens=add_special_tokens,
                                  purpose=purpose)

    def _encode_texts(self, texts: list[str], files: list[list[bytes]], **tokenize) -> MultimodalEncoded:
        """Rendered prompts (one placeholder per image) + their image files -> ids and pixels."""
        processed = []
        for i, (text, row_files) in enumerate(zip(texts, files)):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a JSON row may spell a lone surrogate ("\ud800"): no tokenizer takes it
                raise InputError(f"input {i} holds a lone surrogate (not valid Unicode text)") from None
            done = [self.layout.process(decode_image(data, self.limits)) for data in row_files]
            texts[i] = self.layout.expand(text, done) if done else text
            processed.append(done)
        encoded = self.text.encode(texts, **tokenize)
        image_id = self.layout.image_token_id
        pixels, sizes = [], []
        for i, done in enumerate(processed):
            n = int(encoded.prompt_tokens[i])
            found = int((encoded.input_ids[i, :n] == image_id).sum())
            want = sum(p.tokens for p in done)
            if found != want:
                if found < want:
                    raise InputError(f"input {i}: its image tokens do not fit (truncation or the context length cut "
                                     f"{want - found} of {want}); send a smaller image or a shorter text")
                raise InputError(f"input {i} spells the image placeholder in its text; images are sent as image parts")
            if done:
                pixels.append(np.concatenate([p.pixel_values for p in done]).astype(np.float32, copy=False))
                sizes.append(np.stack([p.size for p in done]).astype(np.int64))
            else:
                pixels.append(np.zeros((0, *self.layout.pixel_shape), dtype=np.float32))
                sizes.append(np.zeros((0, *self.layout.size_shape), dtype=np.int64))
        return MultimodalEncoded(encoded, pixels, sizes)


def _files(images: Sequence[Sequence[bytes]], row: int) -> list[bytes]:
    """Row ``row``'s image files (the non-empty elements; b"" is padding)."""
    return [b if isinstance(b, bytes) else bytes(b) for b in (images[row] if row < len(images) else ()) if len(b)]


def to_bytes_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Ragged per-row arrays -> a (rows, 1) BYTES tensor of their raw bytes (no padding between rows)."""
    out = np.empty((len(arrays), 1), dtype=object)
    for i, a in enumerate(arrays):
        out[i, 0] = np.ascontiguousarray(a).tobytes()
    return out


def from_bytes_row(raw: bytes, dtype, trailing: tuple[int, ...]) -> np.ndarray:
    """One element of :func:`to_bytes_rows` back to its array (``trailing``: every dimension but the first)."""
    array = np.frombuffer(raw, dtype=dtype)
    width = int(np.prod(trailing)) if trailing else 1
    if width == 0 or array.size % width:
        raise InputError(f"a pixel/size row of {array.size} values does not fit rows of shape {trailing}")
    return array.reshape(-1, *trailing)


class NemotronVLLayout(ImageLayout):
    """Llama Nemotron VL: ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x (tiles x tokens per tile) +
    ``</img>``; pixels are tiles ``(tiles, 3, S, S)``, sizes the tile count of each image."""

    def __init__(self, params, image_token_id: int):
        from .nemotron_vl_images import IMAGE_PLACEHOLDER, IMG_CONTEXT

        self.params = params
        self.pad = IMG_CONTEXT
        self.image_token_id = image_token_id
        self.placeholder = IMAGE_PLACEHOLDER
        self.pixel_shape = (3, params.tile_size, params.tile_size)
        self.size_shape = ()

    def process(self, image) -> ProcessedImage:
        from .nemotron_vl_images import preprocess_image

        tiles, count = preprocess_image(image, self.params)
        return ProcessedImage(tiles, np.asarray(count, dtype=np.int64), count * self.params.tokens_per_tile)

    def counts(self, sizes):
        if sizes.size and (sizes < 1).any():
            raise InputError(f"image tile counts must be positive, got {sizes.tolist()}")
        tiles = int(sizes.sum())
        return tiles, tiles * self.params.tokens_per_tile

    def expand(self, prompt, images):
        from .nemotron_vl_images import expand_image_placeholders

        return expand_image_placeholders(prompt, [int(p.size) for p in images], self.params.tokens_per_tile)
