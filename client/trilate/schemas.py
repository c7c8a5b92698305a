"""Request and response bodies of the REST front end: vLLM's pooling-server schemas (0.18-0.20).

Requests accept unknown fields and ignore them, as vLLM's do (``extra="allow"``).  Responses are
declared for the OpenAPI page; the front end writes them itself (no response validation on the
hot path), in vLLM's key order.
"""

from __future__ import annotations

import builtins
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EncodingFormat = Literal["float", "base64", "bytes", "bytes_only"]
EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
INT64_MAX = 2**63 - 1
PoolingTask = Literal["embed", "classify", "token_embed", "token_classify", "embed&token_classify", "plugin"]


@dataclass(frozen=True)
class Bounds:
    """Sizes checked on the raw JSON before pydantic validates a request (``trilate serve`` limits): a list longer
    than ``max_items`` or a string longer than ``max_text_chars`` costs one look, not a full validation."""

    max_items: int = 2048
    max_text_chars: int = 1 << 20


BOUNDS: ContextVar[Bounds] = ContextVar("trilate_request_bounds", default=Bounds())  # set per request by the app


class BoundsError(Exception):
    """A request over a size bound, found on the raw JSON; the app answers it as a 400 naming ``param``.
    (Not a ValueError, so that pydantic does not wrap it into a validation error without the field.)"""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message, self.param = message, param


def _check_bounds(value: Any, field: str, bounds: Bounds, depth: int = 0, texts: bool = True) -> None:
    if isinstance(value, str):
        if len(value) > bounds.max_text_chars:
            raise BoundsError(f"{field}: a text of {len(value)} characters; this server accepts at most "
                              f"{bounds.max_text_chars} characters per text (--max-text-chars).", field)
    elif isinstance(value, list):
        if len(value) > bounds.max_items:
            raise BoundsError(f"Too many items in one request: {len(value)}. This server accepts at most "
                              f"{bounds.max_items} per request (--max-items-per-request).", field)
        if texts and value and depth == 0 and isinstance(value[0], (int, list)) and not isinstance(value[0], bool):
            raise BoundsError(f"{field} as token ids is not supported by trilate (it tokenises its own text); "
                              "send text instead", field)
        if texts:
            for item in value:
                _check_bounds(item, field, bounds, depth + 1)
    elif isinstance(value, dict) and depth < 5:  # a text part of a chat message is 4 levels down
        # Never an image_url: a data: URL is bounded by --max-request-bytes (and the media limits), not as text.
        for key in ("text", "content"):
            if key in value:
                _check_bounds(value[key], field, bounds, depth + 1)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    # Fields whose raw JSON is bounded before validation (texts and lists of texts).
    BOUNDED: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _bounds(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bounds = BOUNDS.get()
            for name in cls.BOUNDED:
                if name in data:
                    _check_bounds(data[name], name, bounds, texts=name != "tokens")
        return data


# -- inputs of /score and /rerank ----------------------------------------------------------------------

class ScoreMultiModalParam(_Request):
    """``{"content": [parts]}``: OpenAI chat content parts (``text``; ``image_url`` with a ``data:`` URL, or an
    http(s) / ``file:`` URL the server allows), for image models; a text model answers 400."""

    content: list[dict[str, Any]]


class TextDocument(_Request):
    """A Jina / Cohere rerank document: ``{"text": "..."}`` (beyond vLLM; treated as the string)."""

    text: str


ScoreInput = str | ScoreMultiModalParam
ScoreInputs = ScoreInput | list[ScoreInput]
RerankDocumentInput = str | ScoreMultiModalParam | TextDocument


class _Common(_Request):
    """``PoolingBasicRequestMixin`` plus ``use_activation``."""

    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1, le=INT64_MAX)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    request_id: str | None = Field(default=None, description="used in the response id when no X-Request-Id header is sent")
    priority: int = Field(default=0, ge=-INT64_MAX - 1, le=INT64_MAX)
    mm_processor_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = None
    use_activation: bool | None = None


class _Encoding(_Request):
    encoding_format: EncodingFormat = "float"
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"


PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


class _ScoreExtras(_Request):
    """Beyond vLLM: BGE-M3's FlagEmbedding scores from one deployment."""

    score_mode: Literal["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"] | None = Field(
        default=None, description="BGE-M3 only (trilate extension): which FlagEmbedding score; default dense "
                                  "(vLLM's cosine of dense vectors)")
    score_weights: list[float] | None = Field(
        default=None, description="BGE-M3 only (trilate extension): weights of dense, sparse, colbert")


class ScoreRequest(_Common, _ScoreExtras):
    """One of four field pairs names the two sides; side 1 is the query side (MaxSim is asymmetric)."""
    BOUNDED = ('queries', 'documents', 'items', 'data_1', 'data_2', 'text_1', 'text_2')

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "anyOf": [{"required": [first, second]} for first, second in PAIRS]})

    queries: ScoreInputs | None = None
    documents: ScoreInputs | None = None
    items: ScoreInputs | None = None
    data_1: ScoreInputs | None = None
    data_2: ScoreInputs | None = None
    text_1: ScoreInputs | None = None
    text_2: ScoreInputs | None = None

    @model_validator(mode="after")
    def _one_pair(self):
        if self.pair() is None:
            raise ValueError("give one pair of fields: queries + documents, queries + items, data_1 + data_2 "
                             "or text_1 + text_2")
        return self

    def pair(self) -> tuple[str, str] | None:
        """The first complete pair, in vLLM's union order."""
        for first, second in PAIRS:
            if getattr(self, first) is not None and getattr(self, second) is not None:
                return first, second
        return None


class RerankRequest(_Common, _ScoreExtras):
    BOUNDED = ('query', 'documents')
    query: ScoreInput
    documents: RerankDocumentInput | list[RerankDocumentInput]
    top_n: int = Field(default=0, description="0 or less: every document")
    return_documents: bool | None = Field(
        default=None, description="Jina / Cohere: false leaves `document` out of each result (vLLM always sends it)")


class PoolingRequest(_Common, _Encoding):
    BOUNDED = ('input', 'messages')
    model_config = ConfigDict(extra="allow", json_schema_extra={"anyOf": [{"required": ["input"]}, {"required": ["messages"]}]})

    input: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = Field(
        default=None, description="one chat conversation, one output (image models): roles free-form (query, "
                                  "document, user ...), content a string or text / image_url parts")
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="extra variables for the chat template (with `messages`)")
    task: PoolingTask | None = None
    embedding_mode: Literal["query", "document"] | None = Field(
        default=None, description="ColBERT checkpoints with PyLate or Stanford conventions (trilate extension): "
                                  "encode as PyLate encodes queries or documents; absent: vLLM's symmetric encoding")
    dimensions: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = Field(
        default=None, description="matryoshka output size, on models trained for it (trilate extension on "
                                  "/pooling; vLLM refuses it)")
    add_special_tokens: bool | None = None

    @model_validator(mode="after")
    def _input_or_messages(self):
        if self.input is None and self.messages is None:
            raise ValueError("give `input` (text) or `messages` (chat)")
        return self


class CohereEmbedContent(_Request):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: dict[str, Any] | None = None


class CohereEmbedInput(_Request):
    content: list[CohereEmbedContent]


CohereEmbeddingType = Literal["float", "base64", "binary", "ubinary", "int8", "uint8"]


class CohereEmbedRequest(_Request):
    """Cohere's ``POST /v2/embed`` (what vLLM serves there): ``texts``, ``images`` (data: URLs, image models) or
    ``inputs`` (text / image_url parts; images for image models)."""

    BOUNDED = ("texts", "images", "inputs")

    model: str | None = None
    input_type: str | None = Field(default=None, description="picks a prefix from the checkpoint's "
                                   "task_instructions (config.json) or prompts (config_sentence_transformers.json)")
    texts: list[str] | None = None
    images: list[str] | None = Field(default=None, description="image models: one image per input, as a data: URL "
                                     "(text models: 400)")
    inputs: list[CohereEmbedInput] | None = Field(default=None, description="text models: one text part per input; "
                                                  "image models: text and image_url parts")
    output_dimension: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    embedding_types: list[CohereEmbeddingType] | None = Field(
        default=None, description="default [\"float\"]; int8 / uint8 are refused (400): their quantisation is "
                                  "not defined exactly anywhere trilate could reproduce")
    truncate: Literal["NONE", "START", "END"] = "END"
    max_tokens: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    priority: int = Field(default=0, ge=-INT64_MAX - 1, le=INT64_MAX)


class EmbeddingRequest(_Common, _Encoding):
    BOUNDED = ('input', 'messages')
    model_config = ConfigDict(extra="allow", json_schema_extra={"anyOf": [{"required": ["input"]}, {"required": ["messages"]}]})

    input: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = Field(
        default=None, description="one chat conversation, one embedding (image models): roles free-form (query, "
                                  "document, user ...), content a string or text / image_url parts")
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="extra variables for the chat template (with `messages`)")
    dimensions: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    add_special_tokens: bool | None = None

    @model_validator(mode="after")
    def _input_or_messages(self):
        if self.input is None and self.messages is None:
            raise ValueError("give `input` (text) or `messages` (chat)")
        return self


class TokenizeRequest(_Request):
    BOUNDED = ('prompt', 'messages')
    model_config = ConfigDict(extra="allow", json_schema_extra={"anyOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _prompt_or_messages(self):
        if self.prompt is None and self.messages is None:
            raise ValueError("give `prompt` (text) or `messages` (chat)")
        return self


class DetokenizeRequest(_Request):
    BOUNDED = ('tokens',)
    model: str | None = None
    tokens: list[int]


# -- responses (for the OpenAPI page) -----------------------------------------------------------------

class UsageInfo(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = 0
    prompt_tokens_details: None = None


class ScoreResponseData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreResponseData]
    usage: UsageInfo


class RerankDocument(BaseModel):
    text: str | None = None
    multi_modal: list[dict[str, Any]] | None = None


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = Field(default=None, description="left out when return_documents is false")
    relevance_score: float


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class PoolingResponseData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[list[float]] | list[float] | str


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


class EmbeddingResponseData(BaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingResponseData]
    usage: UsageInfo


class CohereEmbeddings(BaseModel):
    float: list[list[builtins.float]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereApiVersion(BaseModel):
    version: str = "2"


class CohereTokens(BaseModel):
    input_tokens: int | None = None


class CohereMeta(BaseModel):
    api_version: CohereApiVersion
    tokens: CohereTokens | None = None


class CohereEmbedResponse(BaseModel):
    id: str
    embeddings: CohereEmbeddings
    texts: list[str] | None = Field(default=None, description="the request's texts (absent for inputs)")
    meta: CohereMeta


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelPermission(BaseModel):
    id: str
    object: Literal["model_permission"] = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCardResponse(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCardResponse]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo


class NotFoundResponse(BaseModel):
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "bad request (vLLM's error envelope)"},
    404: {"model": ErrorResponse | NotFoundResponse,
          "description": "unknown model (envelope), or a route the model cannot serve ({\"detail\": \"Not Found\"})"},
    413: {"model": ErrorResponse, "description": "request body larger than --max-request-bytes"},
    500: {"model": ErrorResponse, "description": "internal error"},
    501: {"model": ErrorResponse, "description": "not implemented for this deployment"},
    503: {"model": ErrorResponse, "description": "tritonserver unavailable"},
}
