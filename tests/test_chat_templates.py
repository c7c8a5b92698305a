"""The sandboxed chat-template renderer and the two Nemotron VL templates trilate ships.

Expected prompts are the exact strings of vllm_semantics.md §7.1 (embed: ``bos + prefix + "<image> " per image +
texts``, e.g. ``<|begin_of_text|>passage: <image> Describe the image.``) and §7.2 (rerank:
``question:{q} \\n \\n passage:{d}``, one leading ``<image> `` for an image document).
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from python_backend_models import chat_templates as ct
from python_backend_models.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
BOS = "<|begin_of_text|>"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.fixture(scope="module")
def embed() -> ct.ChatTemplate:
    return ct.bundled(ct.NEMOTRON_EMBED)


@pytest.fixture(scope="module")
def rerank() -> ct.ChatTemplate:
    return ct.bundled(ct.NEMOTRON_RERANK)


def embed_prompt(template: ct.ChatTemplate, messages) -> tuple[str, int]:
    shaped, images = ct.template_messages(messages, template.content_format, image_placeholder="<image>")
    return template.render(shaped, bos_token=BOS), images


def rerank_prompt(template: ct.ChatTemplate, query, document, separator: str = "") -> tuple[str, int]:
    messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    shaped, images = ct.template_messages(
        messages, template.content_format, image_placeholder="<image>", placeholder_separator=separator
    )
    return template.render(shaped), images


def test_the_templates_get_content_in_the_shape_vllm_gives_them(embed, rerank):
    assert embed.content_format == "openai"  # it loops over message['content']
    assert rerank.content_format == "string"


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([{"role": "query", "content": "What is AI?"}], f"{BOS}query: What is AI?"),
        ([{"role": "document", "content": [{"type": "text", "text": "AI is a field."}]}], f"{BOS}passage: AI is a field."),
        # §7.1's example: images first whatever their position, then the text
        (
            [{"role": "document", "content": [{"type": "text", "text": "Describe the image."}, IMAGE]}],
            f"{BOS}passage: <image> Describe the image.",
        ),
        # texts joined with nothing between; one "<image> " per image
        (
            [{"role": "query", "content": [{"type": "text", "text": "a"}, IMAGE, {"type": "text", "text": "b"}, IMAGE]}],
            f"{BOS}query: <image> <image> ab",
        ),
        ([{"role": "user", "content": "no prefix for other roles"}], f"{BOS}no prefix for other roles"),
        ([{"role": "document", "content": [IMAGE]}], f"{BOS}passage: <image> "),
    ],
)
def test_embed_prompts_are_the_exact_strings_of_the_facts(embed, messages, expected):
    prompt, images = embed_prompt(embed, messages)
    assert prompt == expected
    assert images == expected.count("<image>")


def test_an_image_part_reaches_the_template_as_type_image(embed):
    shaped, images = ct.template_messages(
        [{"role": "document", "content": [IMAGE, {"type": "text", "text": "x"}]}], "openai", image_placeholder="<image>"
    )
    assert shaped == [{"role": "document", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert images == 1


def test_the_embedder_refuses_two_messages_with_the_templates_message(embed):
    with pytest.raises(InputError) as err:
        embed_prompt(embed, [{"role": "query", "content": "a"}, {"role": "document", "content": "b"}])
    assert str(err.value) == "Embedding models should only embed one message at a time"


@pytest.mark.parametrize(
    "query, document, separator, expected",
    [
        ("What is AI?", "AI is a field.", "", "question:What is AI? \n \n passage:AI is a field."),
        # an image document (vLLM ≥ 0.21 joins the placeholder to the text with "")
        ("What is shown?", [IMAGE, {"type": "text", "text": "A cat."}], "", "<image> question:What is shown? \n \n passage:A cat."),
        # vLLM up to 0.20 joined it with "\n", which stays in the document
        ("What is shown?", [IMAGE, {"type": "text", "text": "A cat."}], "\n",
         "<image> question:What is shown? \n \n passage:\nA cat."),
        ("What is shown?", [IMAGE], "", "<image> question:What is shown? \n \n passage:"),
        # every literal <image> is deleted from both sides, one is hoisted when the document has one
        ("a <image>b", "c<image>d", "", "<image> question:a b \n \n passage:cd"),
        ("a <image>b", "cd", "", "question:a b \n \n passage:cd"),
    ],
)
def test_rerank_pair_prompts_are_the_exact_strings_of_the_facts(rerank, query, document, separator, expected):
    prompt, _ = rerank_prompt(rerank, query, document, separator)
    assert prompt == expected


def test_a_rerank_prompt_without_a_document_is_an_input_error(rerank):
    with pytest.raises(InputError, match='role "document"'):
        rerank.render([{"role": "query", "content": "q"}])


@pytest.mark.parametrize(
    "source, message",
    [
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{% set xs = [] %}{{ xs.append(1) }}", "unsafe"),  # immutable sandbox: no mutating methods
        ("{% set ns = namespace() %}{% set ns._hidden = 1 %}", "_hidden"),
        ("{{ messages[0].content.__len__() }}", "unsafe"),
    ],
)
def test_what_the_sandbox_forbids_is_an_input_error(source, message):
    template = ct.ChatTemplate.from_string(source, name="evil")
    with pytest.raises(InputError, match=message):
        template.render([{"role": "user", "content": "hi"}])


def test_raise_exception_and_type_errors_inside_a_template_are_input_errors():
    with pytest.raises(InputError, match="^no, because$"):
        ct.ChatTemplate.from_string("{{ raise_exception('no, because') }}").render([])
    with pytest.raises(InputError, match="TypeError"):
        ct.ChatTemplate.from_string("{{ 1 + messages[0].content }}").render([{"role": "user", "content": "x"}])


def test_a_template_that_does_not_compile_names_its_file_and_line(tmp_path):
    path = tmp_path / "broken.jinja"
    path.write_text("ok\n{% if %}\n", encoding="utf-8")
    with pytest.raises(ct.ChatTemplateError, match=r"broken\.jinja.*line 2"):
        ct.load(path)
    with pytest.raises(ct.ChatTemplateError, match="cannot read"):
        ct.load(tmp_path / "missing.jinja")


def test_the_context_holds_bos_eos_generation_flag_and_extra_kwargs():
    template = ct.ChatTemplate.from_string(
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ instruction }}|{{ messages | tojson }}"
    )
    out = template.render([{"role": "user", "content": "é"}], bos_token="<s>", eos_token="</s>",
                          add_generation_prompt=True, instruction="be brief")
    assert out == '<s>|</s>|True|be brief|[{"role": "user", "content": "é"}]'


def test_only_a_loop_over_a_messages_content_makes_the_openai_shape():
    def shape(source: str) -> str:
        return ct.ChatTemplate.from_string(source).content_format

    assert shape("{% for m in messages %}{{ m.content }}{% endfor %}") == "string"
    assert shape("{% for m in messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}") == "openai"
    assert shape("{% for p in messages[0]['content'] | list %}{{ p['type'] }}{% endfor %}") == "openai"


def test_messages_must_be_plain_json_values(embed):
    with pytest.raises(InputError, match="object"):
        embed.render([{"role": "query", "content": [{"type": "text", "text": object()}]}])
    with pytest.raises(InputError, match="unsupported content type 'audio_url'"):
        ct.template_messages([{"role": "query", "content": [{"type": "audio_url"}]}], "openai",
                             image_placeholder="<image>")


def test_the_shipped_templates_are_package_data():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = setuptools["package-data"]["python_backend_models"]
    shipped = sorted(p.name for p in (ROOT / "python_backend_models" / "templates").iterdir())
    assert shipped == sorted([ct.NEMOTRON_EMBED, ct.NEMOTRON_RERANK])
    for name in shipped:
        assert any(fnmatch.fnmatch(f"templates/{name}", pattern) for pattern in patterns), name
    with pytest.raises(ct.ChatTemplateError, match="no chat template named"):
        ct.bundled("missing.jinja")
