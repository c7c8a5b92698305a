"""colpali-engine's query / document conventions for ColQwen3 and ColQwen3.5 (the opt-in ``embedding_mode``).

vLLM encodes a ColQwen query and a ColQwen document alike (reference/vllm_semantics.md §5.3).  colpali-engine
0.3.18, the library these checkpoints were trained with, does not: its processors wrap each side in fixed text.
This module holds those conventions as data and renders the prompt text; tokenising (with the checkpoint's
``tokenizer.json``, special tokens as the tokenizer adds them) and the image pixels (``qwen_vl_images``, the PIL
path) are the multimodal preprocessor's, unchanged.  Pure Python, no torch.

Where each convention comes from (colpali-engine 0.3.18; the ColQwen3 and ColQwen3.5 processors are the same code
apart from docstrings, so one :class:`ColpaliConventions` serves both families):

* ``colpali_engine/utils/processing_utils.py``, ``BaseVisualRetrieverProcessor.process_queries``: a query is
  ``query_prefix + text + query_augmentation_token * 10``; ``query_prefix`` is the base class's ``""`` (neither
  ColQwen processor overrides it).  Its ``max_length`` argument is deprecated and ignored: no truncation.
* ``colpali_engine/models/qwen3/colqwen3/processing_colqwen3.py`` (and ``qwen3_5/colqwen3_5/
  processing_colqwen3_5.py``), class attributes of ``ColQwen3Processor`` / ``ColQwen3_5Processor``:
  ``query_augmentation_token = "<|endoftext|>"``, ``image_token = "<|image_pad|>"`` and
  ``visual_prompt_prefix``, the whole text of every image document (:data:`IMAGE_DOCUMENT_PROMPT`).
* ``process_images(images)``: one image per document, ``image.convert("RGB")``, the text is
  ``visual_prompt_prefix`` alone (a document image carries no text of its own), the Qwen3-VL processor expands
  ``<|image_pad|>`` to grid_t * grid_h * grid_w / merge_size² ids; ``padding="longest"``.
* ``process_texts(texts)``: a text document is its text, tokenised as it is (no prefix, no suffix, no truncation).
* ``__init__``: ``tokenizer.padding_side = "left"`` (batches are left-padded; it changes nothing once the pads
  are dropped, since pad rows are zero vectors and attention masks them out).

What colpali-engine does to the vectors (``modeling_colqwen3.py`` ``ColQwen3.forward``, ``modeling_colqwen3_5.py``
``ColQwen3_5.forward``): last hidden state -> ``custom_text_proj`` (``Linear`` with bias; ColQwen3 hard-codes 320
outputs, ColQwen3.5 reads ``config.dim``, default 128) -> divided by its L2 norm (no epsilon) -> multiplied by
the attention mask.  Every real token keeps its vector: the query's augmentation tokens, the prompt's special
tokens and the ``Describe the image.`` text of an image document all take part in MaxSim
(``mask_non_image_embeddings`` is False by default).  ColQwen3.5 runs ``Qwen3_5Model`` as transformers builds it,
i.e. causal; colpali-engine never reads ``retrieval_attention_contract``.

Scores (``processing_utils.py`` ``score_multi_vector`` -> ``utils/maxsim.py`` ``_torch_maxsim``):
``einsum("bnd,csd->bcns").amax(-1).sum(-1)``, a *sum* over every query token of its best document token.  The
vectors are zero-padded per batch of 128 documents and the pads are not masked, so a document shorter than the
longest in its batch gets zero-similarity candidates: each query token's best is clamped at >= 0 for it.  MaxSim
over the unpadded tokens (``scoring.maxsim``) equals colpali-engine's for the longest document of each batch, and
for the others whenever no query token's best similarity is negative.

Not covered (refused by :func:`document_prompt`, since colpali-engine has no convention for them): an image
document with text parts, a document with more than one image, a query with an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import InputError

COLPALI_ENGINE_VERSION = "0.3.18"

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_DOCUMENT_PROMPT = f"<|im_start|>user\n{IMAGE_PLACEHOLDER}Describe the image.<|im_end|><|endoftext|>"


@dataclass(frozen=True)
class ColpaliConventions:
    """One colpali-engine processor's prompt conventions (module docstring: where each field comes from)."""

    processor: str  # colpali-engine's class, for messages
    query_prefix: str = ""
    query_augmentation_token: str = "<|endoftext|>"
    query_augmentation_count: int = 10
    image_document_prompt: str = IMAGE_DOCUMENT_PROMPT
    image_token: str = "<|image_pad|>"
    padding_side: str = "left"
    max_length: int | None = None  # colpali-engine truncates nothing
    images_per_document: int = 1

    def query_prompt(self, text: str) -> str:
        """``process_queries``' text for one query: prefix + text + the augmentation token x 10."""
        return self.query_prefix + text + self.query_augmentation_token * self.query_augmentation_count

    def document_prompt(self, text_parts: Sequence[str], n_images: int) -> str:
        """One document's text: ``process_images``' fixed prompt (with one image placeholder, to be expanded) for
        an image, ``process_texts``' plain text for text parts (joined with ``"\\n"`` as trilate joins a content
        list's text parts).  Raises InputError for what colpali-engine cannot encode."""
        if n_images == 0:
            return "\n".join(text_parts)
        if n_images > self.images_per_document:
            raise InputError(f"embedding_mode 'document' ({self.processor} conventions) takes one image per document, "
                             f"got {n_images}; send each page as its own document")
        if text_parts:
            raise InputError(f"embedding_mode 'document' ({self.processor} conventions): an image document's prompt "
                             f"is fixed ({self.image_document_prompt!r}); send the image without text parts, or "
                             "leave embedding_mode unset for vLLM's prompt")
        return self.image_document_prompt


# The family names of families/vision.py -> their colpali-engine processor's conventions.
CONVENTIONS: dict[str, ColpaliConventions] = {
    "colqwen3": ColpaliConventions(processor="ColQwen3Processor"),
    "colqwen3_5": ColpaliConventions(processor="ColQwen3_5Processor"),
}


def conventions(family: str) -> ColpaliConventions:
    """The conventions of ``family`` ("colqwen3" | "colqwen3_5"); InputError naming the ones there are."""
    try:
        return CONVENTIONS[family]
    except KeyError:
        raise InputError(f"embedding_mode is only available for {sorted(CONVENTIONS)} (colpali-engine "
                         f"{COLPALI_ENGINE_VERSION} conventions), not {family!r}") from None


def query_prompt(text: str, family: str = "colqwen3") -> str:
    """embedding_mode "query": the text a query is tokenised as (then plain tokenisation, no truncation)."""
    return conventions(family).query_prompt(text)


def document_prompt(text_parts: Sequence[str], n_images: int, family: str = "colqwen3") -> str:
    """embedding_mode "document": the text a document is tokenised as, with one ``<|image_pad|>`` per image left
    for the preprocessor to expand (``ImageLayout.expand``)."""
    return conventions(family).document_prompt(text_parts, n_images)
