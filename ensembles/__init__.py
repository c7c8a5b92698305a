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


def _encode_steps(prefix: str, preprocess: str, encoder: str, text: str, info: ModelInfo, pooled_only: bool,
                  prompt_tokens: str) -> list[mc.ModelEnsembling.Step]:
    """preprocess + encoder for one side; encoder outputs land in ``_<prefix>embeddings`` etc."""
    wires = {name: f"_{prefix}_{name}" for name in (C.INPUT_IDS, C.ATTENTION_MASK, C.OUTPUT_MASK)}
    pre_out = dict(wires)
    pre_out[C.PROMPT_TOKENS] = prompt_tokens
    if pooled_only:
        enc_out = {C.EMBEDDINGS: f"_{prefix}_{C.EMBEDDINGS}"}
    else:
        enc_out = {C.TOKEN_EMBEDDINGS: f"_{prefix}_{C.TOKEN_EMBEDDINGS}", C.NUM_TOKENS: f"_{prefix}_{C.NUM_TOKENS}"}
    return [_step(preprocess, {C.TEXT: text}, pre_out), _step(encoder, wires, enc_out)]


def token_embed_ensemble(name: str, info: ModelInfo, max_batch_size: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    config.input.append(io_tensor(C.PREPROCESS.input(C.TEXT), mc.ModelInput))
    outputs = [
        C.TensorSpec(C.TOKEN_EMBEDDINGS, "FP32", (-1, output_dim(info))),
        C.TensorSpec(C.NUM_TOKENS, "INT32", (1,)),
        C.TensorSpec(C.PROMPT_TOKENS, "INT32", (1,)),
    ]
    if info.pooled:
        outputs.append(C.TensorSpec(C.EMBEDDINGS, "FP32", (output_dim(info),)))
    config.output.extend(io_tensor(spec, mc.ModelOutput) for spec in outputs)
    wires = {n: f"_{n}" for n in (C.INPUT_IDS, C.ATTENTION_MASK, C.OUTPUT_MASK)}
    enc_out = {C.TOKEN_EMBEDDINGS: C.TOKEN_EMBEDDINGS, C.NUM_TOKENS: C.NUM_TOKENS}
    if info.pooled:
        enc_out[C.EMBEDDINGS] = C.EMBEDDINGS
    config.ensemble_scheduling.step.extend([
        _step(C.stage_name(name, "preprocess"), {C.TEXT: C.TEXT}, {**wires, C.PROMPT_TOKENS: C.PROMPT_TOKENS}),
        _step(C.stage_name(name, "encoder"), wires, enc_out),
    ])
    config.parameters[C.MODEL_CARD_PARAMETER].string_value = model_card_parameter(info)
    return config


def score_ensemble(name: str, info: ModelInfo, query_preprocess: str, document_preprocess: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name=C.stage_name(name, "score"), platform="ensemble", max_batch_size=0)
    for side in (C.QUERIES, C.DOCUMENTS):
        config.input.append(io_tensor(C.TensorSpec(side, "STRING", (-1, 1)), mc.ModelInput))
    config.output.extend(io_tensor(spec, mc.ModelOutput) for spec in (
        C.TensorSpec(C.SCORES, "FP32", (-1,)),
        C.TensorSpec(C.QUERY_PROMPT_TOKENS, "INT32", (-1, 1)),
        C.TensorSpec(C.DOCUMENT_PROMPT_TOKENS, "INT32", (-1, 1)),
    ))
    encoder = C.stage_name(name, "encoder")
    pooled_only = info.score_type != LATE_INTERACTION
    steps = _encode_steps("q", query_preprocess, encoder, C.QUERIES, info, pooled_only, C.QUERY_PROMPT_TOKENS)
    steps += _encode_steps("d", document_preprocess, encoder, C.DOCUMENTS, info, pooled_only, C.DOCUMENT_PROMPT_TOKENS)
    if pooled_only:
        steps.append(_step(C.COSINE_MODEL, {C.QUERY_EMBEDDINGS: f"_q_{C.EMBEDDINGS}", C.DOCUMENT_EMBEDDINGS: f"_d_{C.EMBEDDINGS}"},
                           {C.SCORES: C.SCORES}))
    else:
        steps.append(_step(C.MAXSIM_MODEL, {
            C.QUERY_EMBEDDINGS: f"_q_{C.TOKEN_EMBEDDINGS}", C.QUERY_NUM_TOKENS: f"_q_{C.NUM_TOKENS}",
            C.DOCUMENT_EMBEDDINGS: f"_d_{C.TOKEN_EMBEDDINGS}", C.DOCUMENT_NUM_TOKENS: f"_d_{C.NUM_TOKENS}",
        }, {C.SCORES: C.SCORES}))
    config.ensemble_scheduling.step.extend(steps)
    return config
