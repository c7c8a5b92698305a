"""The ensemble graphs: which stages a served model's pipelines chain, and how tensors flow.

Per served model ``<m>``:

* ``<m>``          text -> preprocess -> encoder -> token_embeddings, num_tokens, prompt_tokens
                   (+ embeddings for bi-encoders).  Batching: one text per batch row.
* ``<m>__score``   queries (1 or N) + documents (N) -> two preprocess/encoder passes -> maxsim or
                   cosine -> scores (N,), with prompt-token counts for usage.  Not batching
                   (max_batch_size 0): the two sides have different lengths.

Tensors that live only inside an ensemble are prefixed with ``_``.
"""

from __future__ import annotations

from python_backend_models import contract as C
from python_backend_models.registry import LATE_INTERACTION, ModelInfo
from tritonclient.grpc import model_config_pb2 as mc

from python_backend_models.config import io_tensor, model_card_parameter, output_dim


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> mc.ModelEnsembling.Step:
    step = mc.ModelEnsembling.Step(model_name=model, model_version=-1)
    for key, value in inputs.items():
        step.input_map[key] = value
    for key, value in outputs.items():
        step.output_map[key] = value
    return step


def _features(info: ModelInfo) -> tuple[str, ...]:
    """What preprocess hands the encoder."""
    pixels = (C.PIXEL_VALUES, C.IMAGE_SIZES) if info.multimodal else ()
    return (C.INPUT_IDS, C.ATTENTION_MASK, C.OUTPUT_MASK, *pixels)


def _side_steps(side: str, preprocess: str, name: str, text: str, info: ModelInfo, prompt_tokens: str,
                wanted: tuple[str, ...], images: str | None = None) -> tuple[list[mc.ModelEnsembling.Step], dict[str, str]]:
    """preprocess -> encoder (-> sparse) for one side of a score; returns the steps and where each
    wanted output lands (``_<side>_<output>``).  ``images``: the ensemble input with this side's images."""
    wire = {n: f"_{side}_{n}" for n in (*_features(info), C.TOKEN_WEIGHTS, *wanted)}
    ids = {n: wire[n] for n in _features(info)}
    pre_in = {C.TEXT: text, **({C.IMAGES: images} if images else {})}
    steps = [_step(preprocess, pre_in, {**ids, C.PROMPT_TOKENS: prompt_tokens})]
    encoder_outputs = [n for n in wanted if n in (C.EMBEDDINGS, C.TOKEN_EMBEDDINGS, C.NUM_TOKENS)]
    sparse_outputs = [n for n in wanted if n in (C.LEXICAL_IDS, C.LEXICAL_WEIGHTS, C.NUM_LEXICAL)]
    if sparse_outputs:
        encoder_outputs.append(C.TOKEN_WEIGHTS)
    steps.append(_step(C.stage_name(name, "encoder"), ids, {n: wire[n] for n in encoder_outputs}))
    if sparse_outputs:
        steps.append(_step(C.stage_name(name, "sparse"),
                           {n: wire[n] for n in (C.INPUT_IDS, C.ATTENTION_MASK, C.TOKEN_WEIGHTS)},
                           {n: wire[n] for n in sparse_outputs}))
    return steps, wire


def token_embed_ensemble(name: str, info: ModelInfo, max_batch_size: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    preprocess = C.preprocess_spec(info.multimodal)
    config.input.append(io_tensor(preprocess.input(C.TEXT), mc.ModelInput))
    if info.multimodal:
        config.input.append(io_tensor(preprocess.input(C.IMAGES), mc.ModelInput))
    encoder = C.encoder_spec(output_dim(info), info.pooled_dim, info.sparse, info.multimodal)
    public = [spec for spec in encoder.outputs if spec.name != C.TOKEN_WEIGHTS]
    public.append(C.PREPROCESS.output(C.PROMPT_TOKENS))
    if info.sparse:
        public.extend(C.SPARSE.outputs)
    config.output.extend(io_tensor(spec, mc.ModelOutput) for spec in public)
    wires = {n: f"_{n}" for n in _features(info)}
    enc_out = {spec.name: spec.name for spec in encoder.outputs}
    if info.sparse:
        enc_out[C.TOKEN_WEIGHTS] = "_" + C.TOKEN_WEIGHTS
    pre_in = {C.TEXT: C.TEXT, **({C.IMAGES: C.IMAGES} if info.multimodal else {})}
    steps = [
        _step(C.stage_name(name, "preprocess"), pre_in, {**wires, C.PROMPT_TOKENS: C.PROMPT_TOKENS}),
        _step(C.stage_name(name, "encoder"), wires, enc_out),
    ]
    if info.sparse:
        steps.append(_step(
            C.stage_name(name, "sparse"),
            {C.INPUT_IDS: wires[C.INPUT_IDS], C.ATTENTION_MASK: wires[C.ATTENTION_MASK], C.TOKEN_WEIGHTS: "_" + C.TOKEN_WEIGHTS},
            {spec.name: spec.name for spec in C.SPARSE.outputs},
        ))
    config.ensemble_scheduling.step.extend(steps)
    config.parameters[C.MODEL_CARD_PARAMETER].string_value = model_card_parameter(info)
    return config


def score_ensemble(name: str, info: ModelInfo, query_preprocess: str, document_preprocess: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name=C.stage_name(name, "score"), platform="ensemble", max_batch_size=0)
    for side in (C.QUERIES, C.DOCUMENTS):
        config.input.append(io_tensor(C.TensorSpec(side, "STRING", (-1, 1)), mc.ModelInput))
    if info.multimodal:
        for side in (C.QUERY_IMAGES, C.DOCUMENT_IMAGES):
            config.input.append(io_tensor(C.TensorSpec(side, "STRING", (-1, -1), optional=True), mc.ModelInput))
    config.output.extend(io_tensor(spec, mc.ModelOutput) for spec in (
        C.TensorSpec(C.SCORES, "FP32", (-1,)),
        C.TensorSpec(C.QUERY_PROMPT_TOKENS, "INT32", (-1, 1)),
        C.TensorSpec(C.DOCUMENT_PROMPT_TOKENS, "INT32", (-1, 1)),
    ))
    if info.sparse:
        wanted = (C.EMBEDDINGS, C.TOKEN_EMBEDDINGS, C.NUM_TOKENS, C.LEXICAL_IDS, C.LEXICAL_WEIGHTS, C.NUM_LEXICAL)
        scorer = C.M3_SCORE_MODEL
    elif info.score_type == LATE_INTERACTION:
        wanted = (C.TOKEN_EMBEDDINGS, C.NUM_TOKENS)
        scorer = C.MAXSIM_MODEL
    else:
        wanted = (C.EMBEDDINGS,)
        scorer = C.COSINE_MODEL
    q_images, d_images = (C.QUERY_IMAGES, C.DOCUMENT_IMAGES) if info.multimodal else (None, None)
    q_steps, q = _side_steps("q", query_preprocess, name, C.QUERIES, info, C.QUERY_PROMPT_TOKENS, wanted, q_images)
    d_steps, d = _side_steps("d", document_preprocess, name, C.DOCUMENTS, info, C.DOCUMENT_PROMPT_TOKENS, wanted,
                             d_images)
    inputs = {f"query_{n}": q[n] for n in wanted}
    inputs.update({f"document_{n}": d[n] for n in wanted})
    config.ensemble_scheduling.step.extend(q_steps + d_steps + [_step(scorer, inputs, {C.SCORES: C.SCORES})])
    return config


def cross_encoder_score_ensemble(name: str, info: ModelInfo) -> mc.ModelConfig:
    """``<m>__score`` of a cross-encoder: pair rows -> pair preprocess -> encoder -> one score per pair.

    Not batching itself (max_batch_size 0, like the bi-encoder score ensemble); its steps are, with the pair as
    the batch row, so the pairs of concurrent requests share the encoder's forward passes."""
    config = mc.ModelConfig(name=C.stage_name(name, "score"), platform="ensemble", max_batch_size=0)
    for side in (C.QUERIES, C.DOCUMENTS):
        config.input.append(io_tensor(C.TensorSpec(side, "STRING", (-1, 1)), mc.ModelInput))
    for side in (C.QUERY_IMAGES, C.DOCUMENT_IMAGES):
        config.input.append(io_tensor(C.TensorSpec(side, "STRING", (-1, -1), optional=True), mc.ModelInput))
    config.output.extend(io_tensor(spec, mc.ModelOutput) for spec in (
        C.TensorSpec(C.SCORES, "FP32", (-1, 1)),
        C.TensorSpec(C.QUERY_PROMPT_TOKENS, "INT32", (-1, 1)),
        C.TensorSpec(C.DOCUMENT_PROMPT_TOKENS, "INT32", (-1, 1)),
    ))
    wires = {n: f"_{n}" for n in _features(info)}
    pre_in = {n: n for n in (C.QUERIES, C.DOCUMENTS, C.QUERY_IMAGES, C.DOCUMENT_IMAGES)}
    config.ensemble_scheduling.step.extend([
        _step(C.stage_name(name, "pair_preprocess"), pre_in,
              {**wires, C.PROMPT_TOKENS: C.QUERY_PROMPT_TOKENS, C.DOCUMENT_PROMPT_TOKENS: C.DOCUMENT_PROMPT_TOKENS}),
        _step(C.stage_name(name, "encoder"), wires, {C.SCORES: C.SCORES}),
    ])
    config.parameters[C.MODEL_CARD_PARAMETER].string_value = model_card_parameter(info)
    return config
