"""Encoder stage: token ids of every request in the dynamic batch -> one packed set of forward passes."""

from __future__ import annotations

import ctypes
import ctypes.util
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..errors import InputError
from ..families.base import Wanted, item_length
from ..sparse import SCORE_MODES
from .base import (
    StageModel, bool_param, error_response, input_array, int_param, request_parameters, requested_outputs,
)


def _libc():
    """glibc, for ``malloc_trim``; None elsewhere (musl, macOS), where there is nothing to trim."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()

# Public outputs that need each head (the sparse stage's outputs need the encoder's token weights).
_TOKEN_OUTPUTS = {C.TOKEN_EMBEDDINGS, C.NUM_TOKENS}
_SPARSE_OUTPUTS = {C.TOKEN_WEIGHTS, *(spec.name for spec in C.SPARSE.outputs)}


class EncoderModel(StageModel):
    """Config parameters: ``model_card``, ``dtype`` (auto|float32|float16|bfloat16), ``max_batch_tokens``,
    ``threads`` (torch / ONNX Runtime intra-op threads; 0 = every core), ``backend`` (auto|torch|onnx:
    ``families.onnx_backbone``), ``max_rows`` and ``pass_cost_tokens`` (packing).

    Computes only the heads its requests need: the outputs Triton asks of this step, narrowed by the
    request parameter ``outputs`` (what the caller reads) and, for BGE-M3, by an explicit ``score_mode``.
    """

    def setup(self) -> None:
        import os

        import torch

        from ..families import load_encoder

        threads = int(self.params.get("threads", "0") or 0) or os.cpu_count() or 1
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)  # one request stream per instance: no inter-op pool
        except RuntimeError:  # already set in this process
            pass
        self.info = self.model_info()
        device = f"cuda:{self.device_id}" if self.instance_kind == "GPU" else "cpu"
        self.encoder = load_encoder(self.info, device=device, dtype=self.params.get("dtype", "auto"))
        backend = self.encoder.use_backend(self.params.get("backend", "auto") or "auto")
        why = f" (ONNX Runtime not used: {self.encoder.backend_reason})" if self.encoder.backend_reason else ""
        self.log.log_info(f"{self.model_name}: backbone on {backend}{why}")
        self.encoder.max_batch_tokens = int(self.params.get("max_batch_tokens", "16384"))
        self._trimmed_at = 0.0
        for name in ("max_rows", "pass_cost_tokens"):
            if self.params.get(name):
                setattr(self.encoder, name, int(self.params[name]))
        started = time.monotonic()
        self.encoder.warm_up()
        self.log.log_info(f"{self.model_name}: warm-up forward pass in {time.monotonic() - started:.1f} s")

    def _wanted(self, request, params) -> Wanted:
        """The heads one request needs."""
        mapped = requested_outputs(request)
        if self.info.cross_encoder:
            return Wanted(tokens=False, pooled=True, sparse=False)
        tokens = bool(mapped & _TOKEN_OUTPUTS) or not mapped
        pooled = self.info.pooled_dim is not None and C.EMBEDDINGS in mapped
        sparse = self.info.sparse and (C.TOKEN_WEIGHTS in mapped or not mapped)
        asked = params.get(C.PARAM_OUTPUTS)
        if isinstance(asked, str) and asked:
            names = {n.strip() for n in asked.split(",")}
            tokens, pooled, sparse = tokens and bool(names & _TOKEN_OUTPUTS), pooled and C.EMBEDDINGS in names, \
                sparse and bool(names & _SPARSE_OUTPUTS)
        mode = params.get(C.PARAM_SCORE_MODE)
        if self.info.sparse and mode in SCORE_MODES:
            tokens, sparse = tokens and "colbert" in mode, sparse and "sparse" in mode
        return Wanted(tokens=tokens, pooled=pooled, sparse=sparse)

    def execute(self, requests):
        responses = [None] * len(requests)
        items, normalize, sizes = [], [], []
        spans, wants = {}, {}
        for r, request in enumerate(requests):
            try:
                params = request_parameters(request)
                ids = input_array(request, C.INPUT_IDS)
                att = input_array(request, C.ATTENTION_MASK)
                out = input_array(request, C.OUTPUT_MASK)
                if not (ids.shape == att.shape == out.shape) or ids.ndim != 2:
                    raise InputError("input_ids, attention_mask and output_mask must have the same 2-D shape")
                self.encoder.check(ids, att, out)
                norm = bool_param(params, C.PARAM_USE_ACTIVATION, True)
                size = self._dimensions(int_param(params, C.PARAM_DIMENSIONS))
                wants[r] = self._wanted(request, params)
                rows = self._items(request, ids, att, out)
            except InputError as exc:
                responses[r] = error_response(str(exc))
                continue
            spans[r] = (len(items), len(items) + ids.shape[0], size or self.info.dim)
            items.extend(rows)
            normalize.extend([norm] * len(rows))
            sizes.extend([size] * len(rows))
        results = []
        if items:
            batch = Wanted(tokens=any(w.tokens for w in wants.values()), pooled=any(w.pooled for w in wants.values()),
                           sparse=any(w.sparse for w in wants.values()))
            try:
                results = self.encoder.encode(items, want_tokens=batch.tokens, want_pooled=batch.pooled,
                                              want_sparse=batch.sparse, normalize=normalize, dimensions=sizes)
            except Exception as exc:
                self.log.log_error(f"{self.model_name}: batch of {len(items)} texts failed: {exc}")
                return [resp or error_response(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                        for resp in responses]
        for r, (lo, hi, dim) in spans.items():
            responses[r] = self._response(results[lo:hi], wants[r], dim)
        self._trim_heap()
        return responses

    def _items(self, request, ids, att, out) -> list[dict]:
        """One request's rows as encoder items (feature mappings); image models add each row's pixels."""
        rows = [{C.INPUT_IDS: ids[i], C.ATTENTION_MASK: att[i], C.OUTPUT_MASK: out[i]} for i in range(ids.shape[0])]
        if self.info.multimodal:
            pixels = input_array(request, C.PIXEL_VALUES).reshape(-1)
            image_sizes = input_array(request, C.IMAGE_SIZES).reshape(-1)
            if pixels.shape[0] != len(rows) or image_sizes.shape[0] != len(rows):
                raise InputError("pixel_values and image_sizes need one element per row")
            for row, raw_pixels, raw_sizes in zip(rows, pixels, image_sizes):
                n = item_length(row[C.ATTENTION_MASK], row[C.OUTPUT_MASK])
                row.update(self.encoder.image_features(raw_pixels, raw_sizes, row[C.INPUT_IDS][:n]))
        return rows

    def _trim_heap(self, every_s: float = 2.0) -> None:
        """Give freed heap back to the OS now and then: packs change shape with every batch, and glibc keeps
        the freed buffers of old shapes otherwise, so resident memory creeps up under a long mixed load."""
        now = time.monotonic()
        if now - self._trimmed_at < every_s:
            return
        self._trimmed_at = now
        if _LIBC is not None:
            _LIBC.malloc_trim(0)

    def _dimensions(self, size: int | None) -> int | None:
        """vLLM's checks of a request's ``dimensions`` (matryoshka output size)."""
        if size is None:
            return None
        # As vLLM: any `dimensions` on a model that is not matryoshka, even its own size, is refused.
        if not self.info.matryoshka_dimensions:
            raise InputError(f"Model {self.info.served_name} does not support matryoshka representation, "
                             "changing output dimensions will lead to poor results.")
        if size not in self.info.matryoshka_dimensions:
            raise InputError(f"Model {self.info.served_name} only supports {list(self.info.matryoshka_dimensions)} "
                             f"matryoshka dimensions, use other output dimensions will lead to poor results.")
        return None if size == self.info.dim else size

    def _response(self, results, wanted: Wanted, dim):
        """Padded tensors of one request; heads it did not need come back empty (width 0) or zero."""
        n = len(results)
        if self.info.cross_encoder:  # one score per pair prompt
            scores = np.array([[r.embedding[0]] for r in results], dtype=np.float32).reshape(n, 1)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(C.SCORES, scores)])
        outputs = []
        if wanted.tokens:
            counts = np.array([[r.token_embeddings.shape[0]] for r in results], dtype=np.int32)
            width = int(counts.max()) if n else 0
            emb = np.zeros((n, width, dim), dtype=np.float32)
            for i, r in enumerate(results):
                emb[i, : r.token_embeddings.shape[0]] = r.token_embeddings
            outputs += [pb_utils.Tensor(C.TOKEN_EMBEDDINGS, emb), pb_utils.Tensor(C.NUM_TOKENS, counts)]
        else:
            outputs += [pb_utils.Tensor(C.TOKEN_EMBEDDINGS, np.zeros((n, 0, dim), np.float32)),
                        pb_utils.Tensor(C.NUM_TOKENS, np.zeros((n, 1), np.int32))]
        if wanted.pooled:
            outputs.append(pb_utils.Tensor(C.EMBEDDINGS, np.stack([r.embedding for r in results]).astype(np.float32)))
        elif self.info.pooled_dim is not None:
            outputs.append(pb_utils.Tensor(C.EMBEDDINGS, np.zeros((n, self.info.pooled_dim), np.float32)))
        if self.info.sparse:
            width = max((r.token_weights.shape[0] for r in results), default=0) if wanted.sparse else 0
            weights = np.zeros((n, width), dtype=np.float32)
            if wanted.sparse:
                for i, r in enumerate(results):
                    weights[i, : r.token_weights.shape[0]] = r.token_weights
            outputs.append(pb_utils.Tensor(C.TOKEN_WEIGHTS, weights))
        return pb_utils.InferenceResponse(output_tensors=outputs)
