"""The one place where every stage's tensors are declared.

The config generator, the Triton adapters, the ensembles and the client library all import these
declarations, so a renamed tensor cannot drift between them.

Shapes below exclude the batch dimension of batching models (Triton's convention for
``max_batch_size > 0``); ``-1`` is a variable dimension.  A "batch" at the Triton level is a list of
texts: a request carrying N texts has a leading dimension N.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton data type without the TYPE_ prefix: "STRING", "INT64", "FP32", ...
    dims: tuple[int, ...]
    ragged: bool = False  # allow_ragged_batch: requests of different lengths share a dynamic batch
    optional: bool = False

    @property
    def client_dtype(self) -> str:
        """The datatype string tritonclient expects ("BYTES" for strings)."""
        return "BYTES" if self.dtype == "STRING" else self.dtype


@dataclass(frozen=True)
class StageSpec:
    """A Python-backend model: its tensors and the class in ``python_backend_models.triton``."""

    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    adapter: str  # "module:Class" relative to python_backend_models.triton
    batching: bool = True
    parameters: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name)


def _by_name(specs: tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(name)


# --- preprocess: text -> token ids (tokenizers only; no torch in this process) -------------------
TEXT = "text"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT_MASK = "output_mask"  # which positions come back as vectors (query expansion kept, skiplist dropped)
PROMPT_TOKENS = "prompt_tokens"  # tokens fed to the model, for usage counts
TOKEN_STRS = "token_strs"  # only computed when asked for (the tokenize call)
# Image models only.  `images` (BYTES, optional): row i holds the encoded image files (PNG, JPEG, WebP, GIF bytes)
# of row i's image parts in order, b"" padding.  Between preprocess and encoder each row's pixels travel as one
# BYTES element of raw float32 (`pixel_values`: the family's patch or tile rows) and int64 (`image_sizes`:
# Qwen-VL (n, 3) grids, Nemotron (n,) tile counts): ragged across rows, never padded.
IMAGES = "images"
PIXEL_VALUES = "pixel_values"
IMAGE_SIZES = "image_sizes"

# --- encoder: token ids -> vectors ---------------------------------------------------------------
TOKEN_EMBEDDINGS = "token_embeddings"  # (n_texts, max_tokens, dim), zero rows past num_tokens
NUM_TOKENS = "num_tokens"  # (n_texts, 1) rows of token_embeddings that are real
EMBEDDINGS = "embeddings"  # (n_texts, dim) pooled, for bi-encoders
TOKEN_WEIGHTS = "token_weights"  # (n_texts, positions) BGE-M3 sparse head, aligned with input_ids

# --- sparse stage (BGE-M3): per-position weights -> vLLM's list and FlagEmbedding's per-id weights ---
SPARSE_WEIGHTS = "sparse_weights"  # (n_texts, max_n) vLLM token_classify: BOS/EOS positions dropped
NUM_SPARSE_WEIGHTS = "num_sparse_weights"  # (n_texts, 1)
LEXICAL_IDS = "lexical_ids"  # (n_texts, max_k) token ids with weight > 0, specials dropped, max per id
LEXICAL_WEIGHTS = "lexical_weights"  # (n_texts, max_k)
LEXICAL_TOKENS = "lexical_tokens"  # (n_texts, max_k) the token strings of lexical_ids
NUM_LEXICAL = "num_lexical"  # (n_texts, 1)

# --- scoring (shared models) ---------------------------------------------------------------------
QUERIES = "queries"
DOCUMENTS = "documents"
# A scoring stage's inputs are "query_<output>" / "document_<output>" of the two encoder passes.
QUERY_EMBEDDINGS = "query_embeddings"
DOCUMENT_EMBEDDINGS = "document_embeddings"
QUERY_TOKEN_EMBEDDINGS = "query_token_embeddings"
QUERY_NUM_TOKENS = "query_num_tokens"
DOCUMENT_TOKEN_EMBEDDINGS = "document_token_embeddings"
DOCUMENT_NUM_TOKENS = "document_num_tokens"
SCORES = "scores"
QUERY_IMAGES = "query_images"  # image models: each side's `images`
DOCUMENT_IMAGES = "document_images"
QUERY_PROMPT_TOKENS = "query_prompt_tokens"
DOCUMENT_PROMPT_TOKENS = "document_prompt_tokens"

# Request parameters (Triton request parameters; ensembles forward them to every step).
PARAM_EMBEDDING_MODE = "embedding_mode"  # "query" | "document"; absent = vLLM's symmetric encoding
PARAM_TRUNCATE_PROMPT_TOKENS = "truncate_prompt_tokens"  # int, -1 = max_model_len
PARAM_TRUNCATION_SIDE = "truncation_side"  # "right" | "left"
PARAM_ADD_SPECIAL_TOKENS = "add_special_tokens"  # bool, default true
PARAM_USE_ACTIVATION = "use_activation"  # bool, default true: L2-normalise
PARAM_DIMENSIONS = "dimensions"  # int: matryoshka output size, for models trained for it
PARAM_SCORE_MODE = "score_mode"  # BGE-M3: dense | sparse | colbert | sparse+dense | colbert+sparse+dense
PARAM_SCORE_WEIGHTS = "score_weights"  # BGE-M3 hybrid weights "dense,sparse,colbert" (default 1,1,1)
PARAM_PURPOSE = "purpose"  # "embedding" | "score": the length error's wording; "tokenize": no length check
# Comma-separated public outputs the caller will read (the client sends it): the encoder runs only their
# heads, e.g. a dense embedding request computes no per-token vectors.  Absent = every mapped output.
PARAM_OUTPUTS = "outputs"
# Image models: "json" = every text row is {"text": str} | {"content": [parts]} | {"messages": [...]}
# (python_backend_models.multimodal); absent or "text" = plain text rows.
PARAM_PROMPT_FORMAT = "prompt_format"
PARAM_CHAT_TEMPLATE_KWARGS = "chat_template_kwargs"  # JSON object: extra variables for the chat template

# Config parameter on the public ensemble that describes the served model to clients (JSON).
MODEL_CARD_PARAMETER = "trilate_model_card"

PREPROCESS = StageSpec(
    kind="preprocess",
    inputs=(TensorSpec(TEXT, "STRING", (1,)),),
    outputs=(
        TensorSpec(INPUT_IDS, "INT64", (-1,)),
        TensorSpec(ATTENTION_MASK, "INT64", (-1,)),
        TensorSpec(OUTPUT_MASK, "BOOL", (-1,)),
        TensorSpec(PROMPT_TOKENS, "INT32", (1,)),
        TensorSpec(TOKEN_STRS, "STRING", (-1,)),
    ),
    adapter="preprocess:PreprocessModel",
)

_PIXEL_OUTPUTS = (TensorSpec(PIXEL_VALUES, "STRING", (1,)), TensorSpec(IMAGE_SIZES, "STRING", (1,)))


def preprocess_spec(multimodal: bool = False) -> StageSpec:
    """The preprocess stage; image models add the optional ``images`` input and the per-row pixel outputs."""
    if not multimodal:
        return PREPROCESS
    return StageSpec(
        kind="preprocess",
        inputs=(*PREPROCESS.inputs, TensorSpec(IMAGES, "STRING", (-1,), ragged=True, optional=True)),
        outputs=(*PREPROCESS.outputs, *_PIXEL_OUTPUTS),
        adapter=PREPROCESS.adapter,
    )


# Cross-encoders (Nemotron VL rerank): pair i = (queries[i], documents[i]) -> one prompt through the score template.
PAIR_PREPROCESS = StageSpec(
    kind="pair_preprocess",
    inputs=(
        TensorSpec(QUERIES, "STRING", (1,)),
        TensorSpec(DOCUMENTS, "STRING", (1,)),
        TensorSpec(QUERY_IMAGES, "STRING", (-1,), ragged=True, optional=True),
        TensorSpec(DOCUMENT_IMAGES, "STRING", (-1,), ragged=True, optional=True),
    ),
    outputs=(
        TensorSpec(INPUT_IDS, "INT64", (-1,)),
        TensorSpec(ATTENTION_MASK, "INT64", (-1,)),
        TensorSpec(OUTPUT_MASK, "BOOL", (-1,)),
        TensorSpec(PROMPT_TOKENS, "INT32", (1,)),  # the pair prompt's tokens (usage)
        TensorSpec(DOCUMENT_PROMPT_TOKENS, "INT32", (1,)),  # zeros: a pair is counted once, on the query side
        *_PIXEL_OUTPUTS,
    ),
    adapter="preprocess:PairPreprocessModel",
)


def cross_encoder_spec() -> StageSpec:
    """The encoder of a cross-encoder: pair prompts in, one score per pair out."""
    spec = encoder_spec(1, None, multimodal=True)
    return StageSpec(kind="encoder", inputs=spec.inputs, outputs=(TensorSpec(SCORES, "FP32", (1,)),),
                     adapter=spec.adapter)


def encoder_spec(dim: int, pooled_dim: int | None, sparse: bool = False, multimodal: bool = False) -> StageSpec:
    """``dim`` is -1 for models whose requests may pick a smaller (matryoshka) size; ``pooled_dim`` is
    None for models without a pooled vector; ``sparse`` adds BGE-M3's per-position weights; ``multimodal``
    the per-row pixel inputs."""
    outputs = [TensorSpec(TOKEN_EMBEDDINGS, "FP32", (-1, dim)), TensorSpec(NUM_TOKENS, "INT32", (1,))]
    if pooled_dim is not None:
        outputs.append(TensorSpec(EMBEDDINGS, "FP32", (pooled_dim,)))
    if sparse:
        outputs.append(TensorSpec(TOKEN_WEIGHTS, "FP32", (-1,)))
    return StageSpec(
        kind="encoder",
        inputs=(
            TensorSpec(INPUT_IDS, "INT64", (-1,), ragged=True),
            TensorSpec(ATTENTION_MASK, "INT64", (-1,), ragged=True),
            TensorSpec(OUTPUT_MASK, "BOOL", (-1,), ragged=True),
            *(_PIXEL_OUTPUTS if multimodal else ()),
        ),
        outputs=tuple(outputs),
        adapter="encoder:EncoderModel",
    )


SPARSE = StageSpec(
    kind="sparse",
    inputs=(
        TensorSpec(INPUT_IDS, "INT64", (-1,), ragged=True),
        TensorSpec(ATTENTION_MASK, "INT64", (-1,), ragged=True),
        TensorSpec(TOKEN_WEIGHTS, "FP32", (-1,), ragged=True),
    ),
    outputs=(
        TensorSpec(SPARSE_WEIGHTS, "FP32", (-1,)),
        TensorSpec(NUM_SPARSE_WEIGHTS, "INT32", (1,)),
        TensorSpec(LEXICAL_IDS, "INT64", (-1,)),
        TensorSpec(LEXICAL_WEIGHTS, "FP32", (-1,)),
        TensorSpec(LEXICAL_TOKENS, "STRING", (-1,)),
        TensorSpec(NUM_LEXICAL, "INT32", (1,)),
    ),
    adapter="sparse:SparseModel",
)

# MaxSim over a whole request: queries (1 or N) against N documents; no dynamic batching needed,
# it costs 1/5000 of encoding the documents.
MAXSIM = StageSpec(
    kind="maxsim",
    inputs=(
        TensorSpec(QUERY_TOKEN_EMBEDDINGS, "FP32", (-1, -1, -1)),
        TensorSpec(QUERY_NUM_TOKENS, "INT32", (-1, 1)),
        TensorSpec(DOCUMENT_TOKEN_EMBEDDINGS, "FP32", (-1, -1, -1)),
        TensorSpec(DOCUMENT_NUM_TOKENS, "INT32", (-1, 1)),
    ),
    outputs=(TensorSpec(SCORES, "FP32", (-1,)),),
    adapter="scoring:MaxSimModel",
    batching=False,
)

COSINE = StageSpec(
    kind="cosine",
    inputs=(
        TensorSpec(QUERY_EMBEDDINGS, "FP32", (-1, -1)),
        TensorSpec(DOCUMENT_EMBEDDINGS, "FP32", (-1, -1)),
    ),
    outputs=(TensorSpec(SCORES, "FP32", (-1,)),),
    adapter="scoring:CosineModel",
    batching=False,
)

# BGE-M3's scores (dense cosine, lexical matching, ColBERT mean-MaxSim, hybrids) from both sides' outputs.
M3_SCORE = StageSpec(
    kind="m3_score",
    inputs=tuple(
        spec
        for side in ("query", "document")
        for spec in (
            TensorSpec(f"{side}_{EMBEDDINGS}", "FP32", (-1, -1)),
            TensorSpec(f"{side}_{TOKEN_EMBEDDINGS}", "FP32", (-1, -1, -1)),
            TensorSpec(f"{side}_{NUM_TOKENS}", "INT32", (-1, 1)),
            TensorSpec(f"{side}_{LEXICAL_IDS}", "INT64", (-1, -1)),
            TensorSpec(f"{side}_{LEXICAL_WEIGHTS}", "FP32", (-1, -1)),
            TensorSpec(f"{side}_{NUM_LEXICAL}", "INT32", (-1, 1)),
        )
    ),
    outputs=(TensorSpec(SCORES, "FP32", (-1,)),),
    adapter="scoring:M3ScoreModel",
    batching=False,
)

MAXSIM_MODEL = "trilate__maxsim"
COSINE_MODEL = "trilate__cosine"
M3_SCORE_MODEL = "trilate__m3_score"
SHARED_STAGES = {MAXSIM_MODEL: MAXSIM, COSINE_MODEL: COSINE, M3_SCORE_MODEL: M3_SCORE}


def triton_name(served_name: str) -> str:
    """The Triton spelling of a served model name, one-to-one: ``"org/model"`` -> ``"org--model"``.

    ASCII letters and digits stay, and "." after the first character; "/" becomes "--"; a "-" stays where
    neither neighbour is "-" or "/" and it is not first; every other character (those "-" included) becomes
    "_" and two hex digits per UTF-8 byte.  So "_" is always followed by two hex digits: the result never
    holds "__", which separates a model from its stages (``stage_name``), and two served names never share
    a Triton name (``"a__score"`` is ``"a_5f_5fscore"``, not the score ensemble of ``"a"``).
    """
    if not isinstance(served_name, str) or not served_name:
        raise ValueError(f"a served model name must be a non-empty string, got {served_name!r}")
    out = []
    last = len(served_name) - 1
    for i, ch in enumerate(served_name):
        neighbours = (served_name[i - 1] if i else "", served_name[i + 1] if i < last else "")
        if ch.isascii() and (ch.isalnum() or (ch == "." and i > 0)):
            out.append(ch)
        elif ch == "/" and i > 0:
            out.append("--")
        elif ch == "-" and i > 0 and not any(n in ("-", "/") for n in neighbours):
            out.append("-")
        else:
            try:
                raw = ch.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"served model name {served_name!r} is not valid Unicode text") from None
            out.extend(f"_{byte:02x}" for byte in raw)
    return "".join(out)


def stage_name(model: str, stage: str) -> str:
    """Name of a per-model stage or ensemble: ``<model>__<stage>``."""
    return f"{model}__{stage}"
