"""The client library: vLLM's score / rerank / pooling / embeddings / tokenize semantics over
tritonclient HTTP or gRPC.

Request semantics live here (which pairs to score, sorting, ``top_n``, usage counts); the tensor work
(tokenisation, encoders, MaxSim, cosine) runs in the Triton ensembles.  A tritonclient user and a REST
user therefore get the same numbers.

    >>> from trilate import TrilateClient
    >>> client = TrilateClient("127.0.0.1:8010")                  # or protocol="grpc", "127.0.0.1:8011"
    >>> client.embed("sentence-transformers/all-MiniLM-L6-v2", ["What is machine learning?"]).matrix().shape
    (1, 384)

One ``TrilateClient`` may be shared by threads (each thread gets its own tritonclient connection).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np
from python_backend_models import contract as C
from tritonclient.utils import InferenceServerException

from . import multimodal as MM
from .errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    RequestCancelledError,
    ServerUnavailableError,
    TrilateError,
    UnsupportedTaskError,
)
from .types import (
    EmbeddingItem,
    EmbeddingResult,
    ModelCard,
    PoolingItem,
    PoolingResult,
    RerankDocument,
    RerankItem,
    RerankResult,
    ScoreItem,
    ScoreResult,
    SparseEmbedding,
    TokenizeResult,
    Usage,
)

# How often a cancellable call checks whether its caller gave up.
CANCEL_POLL_S = 0.1

# Texts per Triton request; must not exceed the repository's max_batch_size.
CHUNK = 128

_check_text = MM.check_text


def _prompt_list(value: Any, what: str) -> tuple[list[Any], list[str]]:
    """A prompt or a list of prompts -> (list, each one's name in errors: ``what`` alone, else ``what[i]``)."""
    if isinstance(value, (str, Mapping)):
        return [value], [what]
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{what} must be a string or a list of strings", param=what)
    return list(value), [f"{what}[{i}]" for i in range(len(value))]


def _text_list(value: Any, what: str, card: ModelCard | None = None) -> list[str]:
    """A string or a list of strings -> list; anything else (a ``{"content": [...]}`` prompt for a text model
    included) is a clear InvalidInputError."""
    items = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(items, (list, tuple)):
        raise InvalidInputError(f"{what} must be a string or a list of strings")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            arch = card.architecture if card is not None else "this model"
            if "messages" in item and card is not None:
                raise InvalidInputError(_no_chat_message(card), param="messages")
            # vLLM's words, and what to do instead.
            raise InvalidInputError(f"{what}[{i}]: MultiModalParam is not supported for {arch} (multi-modal inputs "
                                    "({'content': [...]}) need an image model); send text")
        if not isinstance(item, str):
            raise InvalidInputError(f"{what}[{i}] must be a string, got {type(item).__name__}")
        if item == "":
            raise InvalidInputError(f"{what}[{i}] is an empty string")
        out.append(_check_text(item, f"{what}[{i}]"))
    return out


def refuse_cross_encoder(card: ModelCard, route: str) -> None:
    """A cross-encoder serves score and rerank only (vl_wire.md): anything else is a 400 saying so."""
    if card.cross_encoder:
        raise UnsupportedTaskError(
            f"{card.served_name} ({card.architecture}) is a cross-encoder: it scores (query, document) pairs with "
            f"score and rerank; {route} is not served for it", param="model")


def _no_chat_message(card: ModelCard) -> str:
    return (f"chat-style `messages` are not supported for {card.served_name} ({card.architecture}): it has no chat "
            "template; send text with `input` / `prompt`")


def _check_ints(params: dict[str, Any]) -> dict[str, Any]:
    """Integer options must be integers that fit a Triton request parameter (int64)."""
    for name in (C.PARAM_TRUNCATE_PROMPT_TOKENS, C.PARAM_DIMENSIONS):
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}", param=name)
        if not -(2**63) <= int(value) < 2**63:
            raise InvalidInputError(f"{name}={value} is out of range", param=name)
    return params


def _strings(array) -> list[str]:
    """A BYTES tensor's elements as str."""
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in array]


class TrilateClient:
    """``media`` resolves the ``image_url`` parts of prompts for image models (``multimodal.MediaResolver``; the
    default loads ``data:`` URLs only, as ``trilate serve`` does without ``--allowed-media-domains`` /
    ``--allowed-local-media-path``)."""

    def __init__(self, url: str = "127.0.0.1:8010", protocol: str = "http", *, timeout: float = 300.0,
                 media: MM.MediaResolver | None = None):
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self.media = media or MM.MediaResolver()
        self._local = threading.local()
        self._cards: dict[str, ModelCard] | None = None
        self._listed_at = 0.0
        self._listing_complete = True
        self._lock = threading.Lock()

    # -- transport ---------------------------------------------------------------------------------
    @property
    def _module(self):
        if self.protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        return module

    def _triton(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout, network_timeout=self.timeout)
            else:
                client = self._module.InferenceServerClient(self.url)
            self._local.client = client
        return client

    @contextlib.contextmanager
    def bounded(self, deadline: float, cancelled: threading.Event | None = None):
        """Calls made by this thread inside the block end by ``deadline`` (``time.monotonic()``) and send
        nothing more once ``cancelled`` is set: a call past the deadline raises DeadlineExceededError; over
        gRPC the Triton request in flight carries the remaining time, so Triton drops it too."""
        previous = getattr(self._local, "budget", None)
        self._local.budget = (deadline, cancelled)
        try:
            yield self
        finally:
            self._local.budget = previous

    def _remaining(self) -> float:
        budget = getattr(self._local, "budget", None)
        if budget is None:
            return self.timeout
        deadline, cancelled = budget
        if cancelled is not None and cancelled.is_set():
            raise RequestCancelledError("the request was cancelled by its caller")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError("the request did not finish within its deadline (--request-timeout)")
        return min(self.timeout, remaining)

    def _cancellable_infer(self, model, inputs, requested, params, timeout: float, cancelled: threading.Event):
        """gRPC infer that is cancelled (the call, and with it Triton's request) as soon as ``cancelled`` is set."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def callback(result, error):
            box["result"], box["error"] = result, error
            done.set()

        call = self._triton().async_infer(model, inputs, callback, outputs=requested, parameters=params or None,
                                          client_timeout=timeout)
        while not done.wait(CANCEL_POLL_S):
            if cancelled.is_set():
                call.cancel()
                raise RequestCancelledError("the request was cancelled by its caller")
        if box["error"] is not None:
            raise box["error"]
        return box["result"]

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
               parameters: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        timeout = self._remaining()
        module = self._module
        infer_inputs = []
        for name, array in inputs.items():
            dtype = "BYTES" if array.dtype == object else {np.dtype("int64"): "INT64", np.dtype("int32"): "INT32",
                                                          np.dtype("float32"): "FP32", np.dtype("bool"): "BOOL"}[array.dtype]
            tensor = module.InferInput(name, list(array.shape), dtype)
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        if self.protocol == "http":
            requested = [module.InferRequestedOutput(name, binary_data=True) for name in outputs]
        else:
            requested = [module.InferRequestedOutput(name) for name in outputs]
        params = _check_ints({k: v for k, v in (parameters or {}).items() if v is not None})
        budget = getattr(self._local, "budget", None)
        try:
            if self.protocol == "http":
                result = self._triton().infer(model, infer_inputs, outputs=requested, parameters=params or None)
            elif budget is not None and budget[1] is not None:
                result = self._cancellable_infer(model, infer_inputs, requested, params, timeout, budget[1])
            else:
                result = self._triton().infer(model, infer_inputs, outputs=requested, parameters=params or None,
                                              client_timeout=timeout)
        except InferenceServerException as exc:
            error = _translate(exc)
            if isinstance(error, ModelNotFoundError):
                # The server no longer has a model the cached cards name (a restart with another
                # repository, an unload): forget the cards, answer as for an unknown model.
                with self._lock:
                    served = {c.triton_name: c.served_name for c in (self._cards or {}).values()}
                    self._cards = None
                error = ModelNotFoundError(served.get(model.split("__", 1)[0], model))
            raise error from None
        return {name: result.as_numpy(name) for name in outputs}

    # -- models ------------------------------------------------------------------------------------
    # An unknown name re-reads the server's model list at most this often: a storm of bad names costs one
    # listing a second, and the other requests never wait behind it.
    REFRESH_INTERVAL = 1.0

    def models(self, refresh: bool = False) -> list[ModelCard]:
        """Every model the server serves (read from the ensembles' configs).  ``refresh`` re-reads the list
        unless another thread did within ``REFRESH_INTERVAL`` seconds and every model was READY then."""
        def stale() -> bool:
            return self._cards is None or (refresh and (not self._listing_complete or
                                                        time.monotonic() - self._listed_at > self.REFRESH_INTERVAL))

        cards = self._cards
        if not stale():
            return list(cards.values())
        with self._lock:  # one listing at a time; those who waited for it use its result
            if stale():
                self._cards = self._load_cards()
                self._listed_at = time.monotonic()
            return list(self._cards.values())

    def _index(self) -> list[dict[str, Any]]:
        """Triton's repository index: one ``{"name", "state", "reason"?}`` per model."""
        client = self._triton()
        if self.protocol == "http":
            return client.get_model_repository_index()
        return client.get_model_repository_index(as_json=True).get("models", [])

    def _load_cards(self) -> dict[str, ModelCard]:
        try:
            index = self._index()
        except InferenceServerException as exc:
            raise ServerUnavailableError(f"cannot list models at {self.url}: {exc.message()}") from None
        except Exception as exc:  # connection refused and friends
            raise ServerUnavailableError(f"cannot reach tritonserver at {self.url}: {exc}") from None
        names = [m["name"] for m in index if m.get("state") == "READY"]
        # A listing taken while some model is loading (a restart) may lack a model that is about to be back.
        self._listing_complete = len(names) == len(index)
        cards = {}
        ready = set(names)
        for name in names:
            base = name.removesuffix("__score")
            if "__" in base or (base != name and base in ready):
                continue  # a stage, or the score ensemble of a model listed by its own ensemble
            # A cross-encoder has no embedding ensemble: its card is on `<m>__score`.
            raw = self._card_parameter(name)
            if raw:
                card = ModelCard.from_parameter(base, raw)
                cards[card.served_name] = card
        return cards

    def _card_parameter(self, triton_name: str) -> str | None:
        """The model card JSON text of one Triton model's config, or None when it has none."""
        client = self._triton()
        if self.protocol == "http":
            config = client.get_model_config(triton_name)
        else:
            config = client.get_model_config(triton_name, as_json=True)["config"]
        raw = (config.get("parameters") or {}).get(C.MODEL_CARD_PARAMETER)
        return raw["string_value"] if raw else None

    def card_json(self, card: ModelCard) -> dict[str, Any]:
        """Everything the repository builder wrote in ``card``'s model card (e.g. the checkpoint ``path``)."""
        holder = C.stage_name(card.triton_name, "score") if card.cross_encoder else card.triton_name
        return json.loads(self._card_parameter(holder) or "{}")

    def unavailable(self) -> dict[str, str]:
        """What cannot answer now: Triton models that are not READY (name -> state and reason), or
        ``{"tritonserver": why}`` when the server is not ready or cannot be reached; ``{}`` when all can."""
        try:
            ready = self._triton().is_server_ready()  # strict readiness: false while any model is not READY
            index = self._index()
        except Exception as exc:
            return {"tritonserver": f"unreachable at {self.url}: {exc}"}
        down = {m["name"]: f"state {m.get('state') or 'unknown'}" + (f" ({m['reason']})" if m.get("reason") else "")
                for m in index if m.get("state") != "READY"}
        if not ready and not down:
            down["tritonserver"] = "not ready"
        return down

    def model(self, name: str | None) -> ModelCard:
        """The card of a served model; ``None`` picks the only one (vLLM lets ``model`` be omitted)."""
        cards = {c.served_name: c for c in self.models()}
        if name is None:
            if len(cards) == 1:
                return next(iter(cards.values()))
            raise InvalidInputError(f"several models are served ({sorted(cards)}); name one with `model`", param="model")
        if name not in cards:
            cards = {c.served_name: c for c in self.models(refresh=True)}
        if name not in cards:
            raise ModelNotFoundError(name)
        return cards[name]

    # -- encode helpers ----------------------------------------------------------------------------
    @staticmethod
    def _texts_array(texts: Sequence[str]) -> np.ndarray:
        return np.array([[t.encode("utf-8")] for t in texts], dtype=object)

    def _side(self, card: ModelCard, value: Any, what: str) -> MM.WireSide:
        """The prompts of one request field as wire rows: plain texts for a text model (a structured prompt is
        refused with vLLM's message), text / content / messages prompts with their image bytes for an image model."""
        if not card.multimodal:
            texts = _text_list(value, what, card)
            return MM.WireSide([{"text": t} for t in texts], [[] for _ in texts], texts)
        prompts, names = _prompt_list(value, what)
        return MM.wire_side(prompts, names, self.media)

    def _encode(self, card: ModelCard, side: MM.WireSide, outputs: Sequence[str], params: dict[str, Any]):
        """Run the token-embed ensemble over the rows of ``side`` in chunks; yields (start, outputs) per chunk.

        Rows go as plain text unless some prompt is structured; then every row is a JSON object
        (``prompt_format=json``) and the rows' images travel in ``images`` [n, k] (vl_wire.md)."""
        as_json = side.structured
        # The encoder computes only the heads these outputs need (no token vectors for a dense embedding).
        params = {**params, C.PARAM_OUTPUTS: ",".join(outputs), MM.PARAM_PROMPT_FORMAT: "json" if as_json else None}
        for lo, hi in MM.chunks(len(side), CHUNK, side.image_bytes):
            inputs = {C.TEXT: side.text_tensor(as_json, lo, hi)}
            images = side.image_tensor(lo, hi)
            if images is not None:
                inputs[MM.IMAGES] = images
            yield lo, self._infer(card.triton_name, inputs, outputs, params)

    # -- public API --------------------------------------------------------------------------------
    def pooling(
        self,
        model: str | None,
        input: Any = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        task: str | None = None,
        embedding_mode: str | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        use_activation: bool | None = None,
        add_special_tokens: bool | None = None,
        dimensions: int | None = None,
        field: str = "input",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> PoolingResult:
        """vLLM's ``/pooling``: ``token_embed`` (per-token vectors) or ``embed`` (one vector per input).

        ``input``: a prompt or a list of prompts; image models also take ``{"content": [parts]}`` and
        ``{"messages": [...]}`` prompts (``trilate.multimodal``).  ``messages``: one chat conversation, one output
        (vLLM's chat form; image models only); chat prompts default to ``add_special_tokens=False`` as in vLLM.
        ``embedding_mode`` ("query" | "document") applies the checkpoint's ColBERT conventions
        (PyLate's); without it every token comes back, as in vLLM.  ``dimensions`` picks a smaller
        output size on models trained for it (matryoshka, e.g. jina-colbert-v2: 128, 96, 64).
        ``field``: the name of ``input`` in error messages (a REST request's own).  ``chat_template_kwargs``: extra
        variables for the chat template of ``messages`` (vLLM's field).
        """
        card = self.model(model)
        refuse_cross_encoder(card, "pooling")
        task = task or ("token_embed" if "token_embed" in card.tasks else card.tasks[0])
        if task not in card.tasks:
            raise UnsupportedTaskError(f"Unsupported task: {task!r} Supported tasks: {list(card.tasks)}", param="task")
        if embedding_mode is not None and not card.embedding_modes:
            raise InvalidInputError(f"embedding_mode is only available for ColBERT checkpoints with PyLate or "
                                    f"Stanford conventions and for ColQwen models; {card.served_name} has none",
                                    param="embedding_mode")
        if (input is None) == (messages is None):
            raise InvalidInputError("give `input` (prompts) or `messages` (one chat conversation), not both",
                                    param="input")
        if messages is not None:
            if not card.multimodal:
                raise InvalidInputError(_no_chat_message(card), param="messages")
            side = MM.wire_side([{"messages": messages}], ["messages"], self.media)
        else:
            side = self._side(card, input, field)
        if not len(side):
            raise InvalidInputError(f"{field} must not be empty", param=field)
        kinds = {MM.kind_of(p) for p in side.prompts}
        if "messages" in kinds:
            if len(kinds) > 1:
                raise InvalidInputError(f"{field} mixes chat conversations ({{'messages': [...]}}) with other "
                                        "prompts; send them in separate calls (their add_special_tokens defaults "
                                        "differ)", param=field)
            if add_special_tokens is None:
                add_special_tokens = False  # vLLM's chat form: the template writes the special tokens
        elif chat_template_kwargs:
            raise InvalidInputError("chat_template_kwargs goes with `messages`", param="chat_template_kwargs")
        params = {C.PARAM_EMBEDDING_MODE: embedding_mode, C.PARAM_TRUNCATE_PROMPT_TOKENS: truncate_prompt_tokens,
                  C.PARAM_TRUNCATION_SIDE: truncation_side, C.PARAM_USE_ACTIVATION: use_activation,
                  C.PARAM_ADD_SPECIAL_TOKENS: add_special_tokens, C.PARAM_DIMENSIONS: dimensions,
                  C.PARAM_CHAT_TEMPLATE_KWARGS: json.dumps(dict(chat_template_kwargs)) if chat_template_kwargs else None}
        items: list[PoolingItem] = []
        prompt = 0
        outs = {
            "embed": (C.EMBEDDINGS,),
            "token_embed": (C.TOKEN_EMBEDDINGS, C.NUM_TOKENS),
            "token_classify": (C.SPARSE_WEIGHTS, C.NUM_SPARSE_WEIGHTS),
            "embed&token_classify": (C.EMBEDDINGS, C.SPARSE_WEIGHTS, C.NUM_SPARSE_WEIGHTS),
        }[task] + (C.PROMPT_TOKENS,)
        for lo, out in self._encode(card, side, outs, params):
            prompt += int(out[C.PROMPT_TOKENS].sum())
            for i in range(out[C.PROMPT_TOKENS].shape[0]):
                parts = []
                if C.EMBEDDINGS in out:
                    parts.append(out[C.EMBEDDINGS][i])
                if C.TOKEN_EMBEDDINGS in out:
                    parts.append(out[C.TOKEN_EMBEDDINGS][i, : int(out[C.NUM_TOKENS][i, 0])])
                if C.SPARSE_WEIGHTS in out:
                    parts.append(out[C.SPARSE_WEIGHTS][i, : int(out[C.NUM_SPARSE_WEIGHTS][i, 0])])
                data = parts[0] if len(parts) == 1 else np.concatenate(parts)
                items.append(PoolingItem(index=lo + i, data=np.ascontiguousarray(data),
                                         prompt_tokens=int(out[C.PROMPT_TOKENS][i, 0])))
        return PoolingResult(model=card.served_name, task=task, data=items, usage=Usage(prompt, prompt))

    def token_embed(self, model: str | None, input: Any, **kwargs) -> list[np.ndarray]:
        """Per-token vectors, one (n_tokens, dim) array per input."""
        return [item.data for item in self.pooling(model, input, task="token_embed", **kwargs).data]

    def lexical_weights(self, model: str | None, input: str | Sequence[str], **kwargs) -> list[SparseEmbedding]:
        """BGE-M3's lexical weights aggregated as FlagEmbedding does (max per token id, special tokens and
        zero weights dropped), with each token's string: no ``tokenize`` round trip needed."""
        card = self.model(model)
        if "token_classify" not in card.tasks:
            raise UnsupportedTaskError(f"Unsupported task: 'token_classify' Supported tasks: {list(card.tasks)}",
                                       param="task")
        side = self._side(card, input, "input")
        if not len(side):
            raise InvalidInputError("input must not be empty", param="input")
        params = {C.PARAM_TRUNCATE_PROMPT_TOKENS: kwargs.get("truncate_prompt_tokens"),
                  C.PARAM_TRUNCATION_SIDE: kwargs.get("truncation_side")}
        result = []
        for _, out in self._encode(card, side, (C.LEXICAL_IDS, C.LEXICAL_WEIGHTS, C.LEXICAL_TOKENS, C.NUM_LEXICAL), params):
            for i in range(out[C.NUM_LEXICAL].shape[0]):
                k = int(out[C.NUM_LEXICAL][i, 0])
                tokens = _strings(out[C.LEXICAL_TOKENS][i, :k])
                result.append(SparseEmbedding(token_ids=[int(t) for t in out[C.LEXICAL_IDS][i, :k]],
                                              weights=[float(w) for w in out[C.LEXICAL_WEIGHTS][i, :k]], tokens=tokens))
        return result

    def embed(
        self,
        model: str | None,
        input: Any = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str | None = None,
        use_activation: bool | None = None,
        add_special_tokens: bool | None = None,
        dimensions: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> EmbeddingResult:
        """vLLM's ``/v1/embeddings``: one pooled, L2-normalised vector per input (bi-encoders only); ``input`` and
        ``messages`` as for :meth:`pooling`."""
        card = self.model(model)
        refuse_cross_encoder(card, "embed")
        if "embed" not in card.tasks:
            raise UnsupportedTaskError(
                f"Unsupported task: 'embed' Supported tasks: {list(card.tasks)} "
                f"({card.architecture} returns per-token vectors; use pooling with task='token_embed')", param="model")
        result = self.pooling(card.served_name, input, messages=messages, task="embed",
                              truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
                              use_activation=use_activation, add_special_tokens=add_special_tokens,
                              dimensions=dimensions, chat_template_kwargs=chat_template_kwargs)
        return EmbeddingResult(model=result.model, data=[EmbeddingItem(i.index, i.data) for i in result.data],
                               usage=result.usage)

    def score(
        self,
        model: str | None,
        text_1: Any,
        text_2: Any,
        *,
        truncate_prompt_tokens: int | None = None,
        use_activation: bool | None = None,
        dimensions: int | None = None,
        score_mode: str | None = None,
        score_weights: Sequence[float] | None = None,
        fields: tuple[str, str] = ("text_1", "text_2"),
    ) -> ScoreResult:
        """vLLM's ``/score``: 1:1, 1:N (first side broadcast) or N:N (zipped) pairs, in pair order.

        Each side is a prompt or a list; image models take ``{"content": [parts]}`` prompts too (vLLM's
        ``ScoreInput``).  Late-interaction models score with MaxSim (sum over query tokens), bi-encoders with
        cosine, cross-encoders (``card.cross_encoder``) one forward pass per (query, document) pair: the client
        expands 1:N to N pairs and usage is the sum of the pair prompts' tokens.
        BGE-M3 takes ``score_mode`` ("dense" by default, as vLLM; "sparse", "colbert", "sparse+dense",
        "colbert+sparse+dense") and ``score_weights`` (dense, sparse, colbert) as FlagEmbedding's
        ``compute_score`` does.  ``fields``: the two sides' names in error messages (a REST request's own).
        """
        card = self.model(model)
        first, second = fields
        queries = self._side(card, text_1, first)
        documents = self._side(card, text_2, second)
        if not len(queries):
            raise InvalidInputError("At least one text element must be given", param=first)
        if not len(documents):
            raise InvalidInputError("At least one text_pair element must be given", param=second)
        if len(queries) != 1 and len(queries) != len(documents):
            raise InvalidInputError("Input lengths must be either 1:1, 1:N or N:N")
        for side in (queries, documents):
            if any(MM.kind_of(p) == "messages" for p in side.prompts):
                raise InvalidInputError("score inputs are strings or {'content': [...]} objects, not chat "
                                        "`messages`", param=first if side is queries else second)
        as_json = queries.structured or documents.structured
        params = {C.PARAM_TRUNCATE_PROMPT_TOKENS: truncate_prompt_tokens, C.PARAM_USE_ACTIVATION: use_activation,
                  C.PARAM_DIMENSIONS: dimensions, C.PARAM_PURPOSE: "score",
                  MM.PARAM_PROMPT_FORMAT: "json" if as_json else None}
        if score_mode is not None or score_weights is not None:
            if "token_classify" not in card.tasks:
                raise InvalidInputError("score_mode and score_weights are for BGE-M3 models", param="score_mode")
            params[C.PARAM_SCORE_MODE] = score_mode
            if score_weights is not None:
                params[C.PARAM_SCORE_WEIGHTS] = ",".join(str(float(w)) for w in score_weights)
        if "token_classify" in card.tasks and params.get(C.PARAM_SCORE_MODE) is None:
            # BGE-M3's default made explicit, so its encoder runs the dense head only.
            params[C.PARAM_SCORE_MODE] = "dense"
        if card.cross_encoder and len(queries) == 1 and len(documents) > 1:
            # The server scores pair i = (queries[i], documents[i]): 1:N becomes N equal rows.
            n = len(documents)
            queries = MM.WireSide(queries.objects * n, queries.images * n, queries.prompts * n)
        broadcast = len(queries) == 1 and len(documents) > 1
        scores: list[float] = []
        prompt = 0
        pad = 1 if card.has_pad_token else 0
        outs = (C.SCORES, C.QUERY_PROMPT_TOKENS, C.DOCUMENT_PROMPT_TOKENS)

        budget = getattr(self._local, "budget", None)  # the caller's deadline and cancellation, for every chunk

        def chunk(bounds):
            if budget is not None and getattr(self._local, "budget", None) is None:  # in a pool thread
                with self.bounded(*budget):
                    return chunk(bounds)
            lo, hi = bounds
            q_lo, q_hi = (0, 1) if broadcast else (lo, hi)
            inputs = {C.QUERIES: queries.text_tensor(as_json, q_lo, q_hi),
                      C.DOCUMENTS: documents.text_tensor(as_json, lo, hi)}
            for name, side, a, b in ((MM.QUERY_IMAGES, queries, q_lo, q_hi), (MM.DOCUMENT_IMAGES, documents, lo, hi)):
                images = side.image_tensor(a, b)
                if images is not None:
                    inputs[name] = images
            return self._infer(C.stage_name(card.triton_name, "score"), inputs, outs, params)

        def cost(i: int) -> int:
            return documents.image_bytes(i) + (0 if broadcast else queries.image_bytes(i))

        bounds = list(MM.chunks(len(documents), CHUNK, cost))
        if len(bounds) == 1:
            results = [chunk(bounds[0])]
        else:  # in flight together, so Triton's dynamic batcher packs them into shared forward passes
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(len(bounds), 8)) as pool:
                results = list(pool.map(chunk, bounds))
        for out in results:
            scores.extend(float(s) for s in out[C.SCORES].reshape(-1))
            q_tokens = out[C.QUERY_PROMPT_TOKENS].reshape(-1)
            d_tokens = out[C.DOCUMENT_PROMPT_TOKENS].reshape(-1)
            if card.cross_encoder:
                # vLLM: the sum over pair prompts (document_prompt_tokens are zeros by the wire contract).
                prompt += int(q_tokens.sum()) + int(d_tokens.sum())
                continue
            # vLLM (0.18-0.20) counts every pair: query + pad + document tokens.
            for j in range(len(d_tokens)):
                prompt += int(q_tokens[0 if len(q_tokens) == 1 else j]) + pad + int(d_tokens[j])
        data = [ScoreItem(index=i, score=s) for i, s in enumerate(scores)]
        return ScoreResult(model=card.served_name, data=data, usage=Usage(prompt, prompt))

    def rerank(
        self,
        model: str | None,
        query: Any,
        documents: Any,
        *,
        top_n: int | None = None,
        truncate_prompt_tokens: int | None = None,
        use_activation: bool | None = None,
        dimensions: int | None = None,
        score_mode: str | None = None,
        score_weights: Sequence[float] | None = None,
    ) -> RerankResult:
        """vLLM's ``/rerank``: documents sorted by score (stable), cut to ``top_n`` when 0 < top_n < N.

        Image models take ``{"content": [parts]}`` for the query and the documents; such a document comes back as
        ``RerankDocument(text=None, multi_modal=<its parts as sent>)``, as vLLM echoes it."""
        if not isinstance(query, (str, Mapping)):
            raise InvalidInputError("query must be a string", param="query")
        if isinstance(query, str):
            _check_text(query, "query")
        docs, _ = _prompt_list(documents, "documents")
        if not docs:
            raise InvalidInputError("At least one text_pair element must be given", param="documents")
        result = self.score(model, query, docs, truncate_prompt_tokens=truncate_prompt_tokens,
                            use_activation=use_activation, dimensions=dimensions, score_mode=score_mode,
                            score_weights=score_weights, fields=("query", "documents"))
        order = sorted(range(len(docs)), key=lambda i: -result.data[i].score)
        if top_n is not None and 0 < top_n < len(docs):
            order = order[:top_n]

        def echo(doc: Any) -> RerankDocument:
            if isinstance(doc, Mapping):
                return RerankDocument(text=None, multi_modal=list(doc["content"]))
            return RerankDocument(text=doc)

        items = [RerankItem(index=i, document=echo(docs[i]), relevance_score=result.data[i].score) for i in order]
        return RerankResult(model=result.model, results=items, usage=result.usage)

    def tokenize(self, model: str | None, prompt: str, *, add_special_tokens: bool = True,
                 return_token_strs: bool = False) -> TokenizeResult:
        """vLLM's ``/tokenize`` (no truncation; the model's own preprocess stage does the work)."""
        card = self.model(model)
        if not isinstance(prompt, str):
            raise InvalidInputError("prompt must be a string", param="prompt")
        _check_text(prompt, "prompt")
        outs = [C.INPUT_IDS, C.PROMPT_TOKENS] + ([C.TOKEN_STRS] if return_token_strs else [])
        # Length limits do not apply to /tokenize: ask for truncation at a size no text reaches.
        out = self._infer(C.stage_name(card.triton_name, "preprocess"), {C.TEXT: self._texts_array([prompt])}, outs,
                          {C.PARAM_ADD_SPECIAL_TOKENS: add_special_tokens, C.PARAM_PURPOSE: "tokenize"})
        n = int(out[C.PROMPT_TOKENS][0, 0])
        ids = [int(t) for t in out[C.INPUT_IDS][0, :n]]
        strs = None
        if return_token_strs:
            strs = _strings(out[C.TOKEN_STRS][0, :n])
        return TokenizeResult(count=n, max_model_len=card.max_model_len, tokens=ids, token_strs=strs)


def _translate(exc: InferenceServerException) -> TrilateError:
    message = exc.message() or str(exc)
    # Triton prefixes ensemble errors with "in ensemble 'name', "; the rest is our stage's message.
    if message.startswith("in ensemble "):
        message = message.split(", ", 1)[-1]
    status = str(exc.status() or "")
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return DeadlineExceededError("the request did not finish within its deadline (--request-timeout)")
    # Triton's HTTP endpoint answers an unknown model with 400 ("Request for unknown model: ..."), gRPC
    # with NOT_FOUND; the caller names the model.
    if status in ("404", "StatusCode.NOT_FOUND") or "unknown model" in message:
        return ModelNotFoundError(message)
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InvalidInputError(message)
    if status in ("503", "StatusCode.UNAVAILABLE") or "is not healthy" in message:
        # A Python-backend stub that died answers "Stub process '...' is not healthy" until trilate's
        # supervisor has restarted it: retryable, not a bug.
        return ServerUnavailableError(message)
    return TrilateError(message)
