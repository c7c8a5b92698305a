"""Hugging Face style chat templates (Jinja), rendered in a sandbox, as vLLM's ``--chat-template`` uses them.

A template sees what ``transformers``' ``apply_chat_template`` gives it: ``messages`` (a list of
``{"role", "content"}`` dicts), ``bos_token``, ``eos_token``, ``add_generation_prompt``, any extra keyword
(``chat_template_kwargs``), and the globals ``raise_exception(message)``, ``strftime_now(format)``,
``namespace(...)`` and the ``tojson`` filter. The environment is Jinja's ``ImmutableSandboxedEnvironment`` with
``trim_blocks`` and ``lstrip_blocks`` and the ``loopcontrols`` extension, like transformers'; the
``{% generation %}`` tag (assistant masks) is not supported.

Content reaches a template in one of two shapes, as vLLM hands it over (``content_format``, detected from the
template like vLLM's ``--chat-template-content-format auto``):

* ``"openai"`` — a template that loops over a message's ``content`` gets a list of parts:
  ``{"type": "text", "text": ...}`` and, for every image, ``{"type": "image"}`` (no pixels; they travel
  separately, in placeholder order). The Nemotron embed template is one.
* ``"string"`` — any other template gets ``content`` as one string with each image as the model's placeholder
  (``<image>`` for Nemotron VL). The Nemotron rerank template is one.

Errors: a template that does not compile is a :class:`ChatTemplateError` (server configuration, raised when the
template loads, naming the file and line); anything that goes wrong while rendering — ``raise_exception``, an
operation the sandbox forbids, a type error inside the template — is an :class:`InputError` (HTTP 400 / Triton
INVALID_ARG) carrying the template's own message, as vLLM answers 400 with it.

The two templates trilate ships for the Nemotron VL checkpoints are :data:`NEMOTRON_EMBED` and
:data:`NEMOTRON_RERANK` (files in ``templates/``); :func:`bundled` loads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from .errors import InputError

NEMOTRON_EMBED = "nemotron_vl_embed.jinja"
NEMOTRON_RERANK = "nemotron_vl_rerank.jinja"

CONTENT_FORMATS = ("string", "openai")


class ChatTemplateError(ValueError):
    """A chat template file cannot be read or compiled; the message names the file and the line."""


def _raise_exception(message: Any) -> None:
    raise jinja2.exceptions.TemplateError(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes; chat templates (and transformers) expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names, so a template cannot plant dunder attributes."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's signature trick (``self`` in args)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


def _plain(value: Any, where: str = "messages") -> Any:
    """A fresh copy made of dict / list / str / int / float / bool / None only: the template can reach no
    caller object's attributes and cannot change the caller's messages."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise InputError(f"{where} holds a {type(value).__name__}; chat messages carry only JSON values")


def _is_content_access(node: jinja2.nodes.Node) -> bool:
    """``x['content']`` or ``x.content``, possibly through filters (``x['content'] | list``)."""
    while isinstance(node, jinja2.nodes.Filter) and node.node is not None:
        node = node.node
    if isinstance(node, jinja2.nodes.Getitem):
        return isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == "content"
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr == "content"
    return False


def detect_content_format(ast: jinja2.nodes.Template) -> str:
    """``"openai"`` when the template loops over a message's ``content`` (it expects a list of parts),
    else ``"string"`` — the test vLLM's ``auto`` content format makes, in a simpler form."""
    for loop in ast.find_all(jinja2.nodes.For):
        if _is_content_access(loop.iter):
            return "openai"
    return "string"


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template. Build with :meth:`from_string`, :func:`load` or :func:`bundled`."""

    name: str
    source: str
    content_format: str
    _template: jinja2.Template = field(repr=False, compare=False)

    @classmethod
    def from_string(cls, source: str, name: str = "<chat template>") -> ChatTemplate:
        env = _environment()
        try:
            ast = env.parse(source)
            template = env.from_string(ast)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template {name} does not compile: line {exc.lineno}: {exc.message}") from exc
        return cls(name=name, source=source, content_format=detect_content_format(ast), _template=template)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        bos_token: str = "",
        eos_token: str = "",
        add_generation_prompt: bool = False,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text. ``messages`` must already be in this template's :attr:`content_format`
        (:func:`template_messages` converts request messages). Raises :class:`InputError` on any render error."""
        context = {
            **_plain(template_kwargs, "chat_template_kwargs"),
            "messages": _plain(list(messages)),
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": bool(add_generation_prompt),
        }
        try:
            return self._template.render(**context)
        except jinja2.exceptions.TemplateError as exc:  # raise_exception, SecurityError, UndefinedError, ...
            raise InputError(str(exc) or f"chat template {self.name} failed ({type(exc).__name__})") from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise InputError(f"chat template {self.name} failed: {type(exc).__name__}: {exc}") from exc


def load(path: str | os.PathLike[str]) -> ChatTemplate:
    """A template file (``--chat-template PATH``); a missing or unreadable file is a :class:`ChatTemplateError`."""
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
    except OSError as exc:
        raise ChatTemplateError(f"cannot read chat template {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    return ChatTemplate.from_string(source, name=os.fspath(path))


def bundled(name: str) -> ChatTemplate:
    """One of the templates shipped in ``python_backend_models/templates`` (:data:`NEMOTRON_EMBED`, ...)."""
    file = resources.files(__package__).joinpath("templates", name)
    if not file.is_file():
        raise ChatTemplateError(f"trilate ships no chat template named {name!r}")
    return ChatTemplate.from_string(file.read_text(encoding="utf-8"), name=f"trilate:{name}")


def _parts(content: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, (list, tuple)):
        raise InputError(f"{where} must be a string or a list of content parts")
    for i, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise InputError(f"{where}[{i}] must be an object with a 'type'")
    return list(content)


IMAGE_PART_TYPES = ("image", "image_url", "image_pil", "image_embeds")


def content_parts(content: Any, where: str) -> tuple[list[str], int]:
    """A message's (or a score item's) content -> (its text parts, its number of images); anything else is an
    ``InputError`` naming the part."""
    return _split(_parts(content, where), where)


def string_content(content: Any, where: str, *, image_placeholder: str,
                   placeholder_separator: str = "\n") -> tuple[str, int]:
    """Content as one string, the ``"string"`` shape of :func:`template_messages` (and vLLM's /score item
    prompt): the text parts joined with ``"\n"``, one ``image_placeholder`` per image in front; and the images."""
    texts, images = content_parts(content, where)
    return _as_string(texts, images, image_placeholder, placeholder_separator), images


def _as_string(texts: list[str], images: int, image_placeholder: str, placeholder_separator: str) -> str:
    text = "\n".join(texts)
    return placeholder_separator.join([image_placeholder] * images + [text]) if images else text


def _split(parts: Iterable[Mapping[str, Any]], where: str) -> tuple[list[str], int]:
    texts, images = [], 0
    for i, part in enumerate(parts):
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InputError(f"{where}[{i}] is a text part without a string 'text'")
            texts.append(part["text"])
        elif kind in IMAGE_PART_TYPES:
            images += 1
        else:
            raise InputError(f"{where}[{i}] has the unsupported content type {kind!r}; use text or image_url")
    return texts, images


def template_messages(
    messages: Sequence[Mapping[str, Any]],
    content_format: str,
    *,
    image_placeholder: str,
    placeholder_separator: str = "\n",
) -> tuple[list[dict[str, Any]], int]:
    """Request messages → what the template sees, and the number of images (in placeholder order).

    A message's ``content`` is a string or a list of parts (``text``; ``image_url`` / ``image`` / ... for images).
    ``"openai"``: text parts stay ``{"type": "text", "text"}``, every image part becomes ``{"type": "image"}``,
    a string becomes one text part. ``"string"``: the text parts joined with ``"\\n"``, preceded by one
    ``image_placeholder`` per image joined to the text with ``placeholder_separator`` — vLLM's score parser
    used ``"\\n"`` up to v0.20 and ``""`` since (PR #38617). Other message keys are kept.
    """
    if content_format not in CONTENT_FORMATS:
        raise ValueError(f"content_format must be one of {CONTENT_FORMATS}, got {content_format!r}")
    out, total = [], 0
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InputError(f"messages[{m}] must be an object with a string 'role'")
        where = f"messages[{m}].content"
        parts = _parts(message.get("content"), where)
        texts, images = _split(parts, where)
        total += images
        if content_format == "openai":
            content: Any = [
                {"type": "text", "text": p["text"]} if p["type"] == "text" else {"type": "image"} for p in parts
            ]
        else:
            content = _as_string(texts, images, image_placeholder, placeholder_separator)
        out.append({**{k: v for k, v in message.items() if k != "content"}, "content": content})
    return out, total
