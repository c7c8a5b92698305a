"""The text families: their model cards (what ``describe`` reads from a checkpoint), their preprocessing
and their encoders.  Torch-free: ``encoder`` imports the torch side only when called.

A family (:class:`Family`) owns everything one kind of architecture needs:

* ``describe(ckpt, ...)``  the model card (``cards.ModelInfo``) from config.json, tokenizer files and
  safetensors headers, or a ``CheckpointError`` that says the fix;
* ``preprocessor(info)``   the preprocess stage's core (tokenizer, chat template, image processor);
* ``encoder(info, ...)``   the encoder stage's core (backbone, heads), imported lazily.

The registry (``python_backend_models.registry``) maps architecture names to instances of these classes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cards import BI_ENCODER, LATE_INTERACTION, DenseLayer, ModelInfo, safetensors_shapes
from ..checkpoint import Checkpoint, CheckpointError, read_json_if_exists


_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}
_DENSE_TYPES = {"sentence_transformers.models.Dense", "pylate.models.Dense.Dense", "sentence_transformers.models.Dense.Dense"}


def _st_dense_layers(ckpt: Checkpoint) -> list[DenseLayer]:
    """sentence-transformers / PyLate Dense modules listed in ``modules.json``, in order."""
    layers = []
    for module in ckpt.st_modules():
        if module.get("type") not in _DENSE_TYPES:
            continue
        folder = ckpt.path / module["path"]
        cfg = read_json_if_exists(folder / "config.json") or {}
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no model.safetensors (trilate loads safetensors only)")
        shapes = safetensors_shapes(weights)
        weight_key = next((k for k in ("linear.weight", "weight", "dense.weight") if k in shapes), None)
        if weight_key is None:
            raise CheckpointError(f"{weights} has no linear.weight / weight / dense.weight tensor")
        bias_key = weight_key.replace("weight", "bias")
        act_name = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
        if act_name not in _ACTIVATIONS:
            raise CheckpointError(f"{folder}: unsupported Dense activation {act_name!r}")
        if cfg.get("use_residual"):
            raise CheckpointError(f"{folder}: Dense with use_residual is not supported")
        out_f, in_f = shapes[weight_key]
        layers.append(
            DenseLayer(
                file=str(weights.relative_to(ckpt.path)),
                weight_key=weight_key,
                bias_key=bias_key if (cfg.get("bias", True) and bias_key in shapes) else None,
                in_features=in_f,
                out_features=out_f,
                activation=_ACTIVATIONS[act_name],
            )
        )
    return layers


def _main_file_projection(ckpt: Checkpoint) -> DenseLayer | None:
    """A ColBERT ``linear.weight`` inside the main checkpoint (Stanford layout)."""
    main = ckpt.path / "model.safetensors"
    if not main.is_file():
        return None
    shapes = safetensors_shapes(main)
    for key in sorted(shapes):
        bare = key
        for prefix in ("model.", "bert.", "roberta."):
            bare = bare.removeprefix(prefix)
        if bare in ("linear.weight", "colbert_linear.weight"):
            out_f, in_f = shapes[key]
            return DenseLayer("model.safetensors", key, None, in_f, out_f, "identity")
    return None


def _max_model_len(ckpt: Checkpoint, requested: int | None) -> int:
    """The model's limit: its position table (a hard limit), capped by sentence-transformers'
    ``max_seq_length`` unless ``--max-model-len`` asks for more (up to the hard limit)."""
    config = ckpt.config
    candidates = [config.get(k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")]
    hard = next((int(v) for v in candidates if isinstance(v, int) and v > 0), None)
    absolute = config.get("position_embedding_type", "absolute") == "absolute"
    if hard is not None and absolute and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        hard -= 2  # positions start after the padding index
    st_cfg = read_json_if_exists(ckpt.path / "sentence_bert_config.json") or {}
    default = hard
    if isinstance(st_cfg.get("max_seq_length"), int):
        default = min(hard, st_cfg["max_seq_length"]) if hard else st_cfg["max_seq_length"]
    if default is None:
        default = 512
    if requested is None:
        return default
    limit = hard or default
    if requested < 1 or requested > limit:
        raise CheckpointError(
            f"--max-model-len {requested} is out of range for {ckpt.path.name}: the model's limit is {limit} tokens"
        )
    return requested


def _bge_m3_colbert_dim(ckpt: Checkpoint, hidden: int) -> int:
    """Rows of ``colbert_linear.pt`` (BGE-M3's multi-vector head); needs torch to read the .pt file."""
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        if not (ckpt.path / name).is_file():
            raise CheckpointError(
                f"{ckpt.path} has no {name}; BgeM3EmbeddingModel needs colbert_linear.pt and sparse_linear.pt "
                "beside the backbone, as BAAI/bge-m3 ships them"
            )
    from ..checkpoint import load_torch_state_dict

    weight = load_torch_state_dict(ckpt.path / "colbert_linear.pt")["weight"]
    if weight.shape[1] != hidden:
        raise CheckpointError(f"{ckpt.path}/colbert_linear.pt expects {weight.shape[1]} inputs; hidden_size is {hidden}")
    return int(weight.shape[0])


def _matryoshka_dimensions(ckpt: Checkpoint, dim: int) -> tuple[int, ...]:
    """The output sizes a request may pick with `dimensions`: config.json's ``matryoshka_dimensions``
    (as vLLM reads it; none declared = not matryoshka, every `dimensions` refused)."""
    declared = ckpt.config.get("matryoshka_dimensions")
    if declared is None:
        return ()
    if not isinstance(declared, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in declared):
        raise CheckpointError(f"{ckpt.path}: matryoshka_dimensions must be a list of integers, got {declared!r}")
    wrong = [d for d in declared if not 1 <= d <= dim]
    if wrong:
        raise CheckpointError(f"{ckpt.path}: matryoshka_dimensions {wrong} are outside 1..{dim} (the model's output "
                              "size)")
    return tuple(declared)


def _prompts(ckpt: Checkpoint) -> dict[str, str]:
    """Prefixes by input type, as vLLM's /v2/embed reads them: config.json ``task_instructions`` when it is a
    non-empty mapping, else ``config_sentence_transformers.json`` ``prompts``; string values only."""
    for source in (ckpt.config.get("task_instructions"),
                   (read_json_if_exists(ckpt.path / "config_sentence_transformers.json") or {}).get("prompts")):
        if isinstance(source, dict) and source:
            return {k: v for k, v in source.items() if isinstance(k, str) and isinstance(v, str)}
    return {}


def _has_pad_token(path: Path) -> bool:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (read_json_if_exists(path / name) or {}).get("pad_token"):
            return True
    return False


class Family:
    """One architecture family.  Subclasses override the hooks; ``describe`` is shared."""

    name = ""  # also the card's ``family``
    score_type = BI_ENCODER
    tasks: tuple[str, ...] = ()

    def __init__(self, backbone: str, model_types: tuple[str, ...] | None = None):
        self.backbone = backbone  # transformers model_type of the backbone (or our own module's name)
        self.model_types = model_types or (backbone,)  # config.json model_type(s) it reads

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backbone!r})"

    # -- the card -----------------------------------------------------------------------------------
    def check_backbone(self, ckpt: Checkpoint, fits: list[str]) -> None:
        """``fits``: the architectures that would read this checkpoint's model_type (for the hint)."""
        model_type = ckpt.config.get("model_type")
        if model_type in self.model_types:
            return
        hint = (f"; architectures for a {model_type!r} backbone: {', '.join(fits)} — pick one with "
                "--hf-overrides '{\"architectures\": [\"NAME\"]}'") if fits else ""
        raise CheckpointError(
            f"{ckpt.architecture} needs a {self.backbone!r} backbone but {ckpt.path}/config.json says model_type "
            f"{model_type!r}{hint}"
        )

    def describe(self, ckpt: Checkpoint, served_name: str, *, max_model_len: int | None = None,
                 hf_overrides: dict[str, Any] | None = None) -> ModelInfo:
        """Read everything the serving stack needs from a text checkpoint, or fail with the fix."""
        _require_safetensors(ckpt)
        config = ckpt.config
        hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
        st_cfg = read_json_if_exists(ckpt.path / "sentence_bert_config.json") or {}
        projection, pooling, embedding_modes = self.heads_of(ckpt)
        if projection and projection[0].in_features != hidden:
            raise CheckpointError(
                f"{ckpt.path}: projection expects {projection[0].in_features} inputs but hidden_size is {hidden}"
            )
        dim = self.output_size(ckpt, hidden, projection)
        return ModelInfo(
            **self.identity(ckpt, served_name),
            dim=dim,
            hidden_size=hidden,
            max_model_len=_max_model_len(ckpt, max_model_len),
            do_lower_case=bool(st_cfg.get("do_lower_case", False)),
            pooling=pooling,
            projection=tuple(projection),
            embedding_modes=embedding_modes,
            has_pad_token=_has_pad_token(ckpt.path),
            pooled_dim=self.pooled_size(hidden, dim),
            sparse=False,
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=config.get("eos_token_id"),
            matryoshka_dimensions=_matryoshka_dimensions(ckpt, dim),
            hf_overrides=dict(hf_overrides or {}),
            prompts=_prompts(ckpt),
        )

    def identity(self, ckpt: Checkpoint, served_name: str) -> dict[str, Any]:
        """The card fields that say which model this is and how it is served."""
        return {"served_name": served_name, "path": str(ckpt.path), "architecture": ckpt.architecture,
                "family": self.name, "backbone": self.backbone, "score_type": self.score_type, "tasks": self.tasks}

    def heads_of(self, ckpt: Checkpoint) -> tuple[list[DenseLayer], str, bool]:
        """(projection layers, pooling "mean" | "cls", ColBERT query/document conventions available)."""
        raise NotImplementedError

    def output_size(self, ckpt: Checkpoint, hidden: int, projection: list[DenseLayer]) -> int:
        return projection[-1].out_features if projection else hidden

    def pooled_size(self, hidden: int, dim: int) -> int | None:
        """Size of the pooled vector; None for a family without one."""
        return None

    # -- the stages ---------------------------------------------------------------------------------
    def preprocessor(self, info: ModelInfo):
        """The preprocess stage's core for ``info`` (torch-free)."""
        from ..tokenization import TextPreprocessor

        return TextPreprocessor(Path(info.path), info.max_model_len, do_lower_case=info.do_lower_case,
                                colbert=self.score_type == LATE_INTERACTION)

    def encoder(self, info: ModelInfo, device: str = "cpu", dtype: str = "auto"):
        """The encoder stage's core for ``info`` (imports torch and transformers)."""
        raise NotImplementedError


class ColbertFamily(Family):
    """ColBERT late interaction on a text backbone: backbone -> Dense projection -> per-token L2."""

    name = "colbert"
    score_type = LATE_INTERACTION
    tasks = ("token_embed",)

    def heads_of(self, ckpt):
        config = ckpt.config
        main = _main_file_projection(ckpt)
        projection = [main] if main is not None else _st_dense_layers(ckpt)
        if not projection:
            raise CheckpointError(
                f"{ckpt.path}: no ColBERT projection found (looked for linear.weight / colbert_linear.weight in "
                "model.safetensors, then Dense modules in modules.json)"
            )
        declared = next((config[k] for k in ("colbert_dim", "dim", "projection_dim") if config.get(k)), None)
        if declared is not None and int(declared) != projection[-1].out_features:
            raise CheckpointError(
                f"{ckpt.path}: config says the ColBERT dimension is {declared} (colbert_dim/dim/projection_dim) "
                f"but the projection weight gives {projection[-1].out_features}; fix it with "
                f"--hf-overrides '{{\"colbert_dim\": {projection[-1].out_features}}}'"
            )
        embedding_modes = (ckpt.path / "config_sentence_transformers.json").is_file() or (
            ckpt.path / "artifact.metadata"
        ).is_file()
        return projection, "mean", embedding_modes

    def encoder(self, info, device="cpu", dtype="auto"):
        from .colbert import ColbertEncoder

        return ColbertEncoder(info, device=device, dtype=dtype)


class BiEncoderFamily(Family):
    """A sentence-transformers bi-encoder: pooled (mean or CLS) vector, optional Dense layers."""

    name = "bi_encoder"
    tasks = ("embed", "token_embed")

    def heads_of(self, ckpt):
        pooling = "mean"
        for module in ckpt.st_modules():
            if module.get("type", "").endswith("Pooling"):
                pcfg = read_json_if_exists(ckpt.path / module["path"] / "config.json") or {}
                if pcfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif not pcfg.get("pooling_mode_mean_tokens", True):
                    raise CheckpointError(f"{ckpt.path}: only mean and CLS pooling are supported")
        return _st_dense_layers(ckpt), pooling, False

    def pooled_size(self, hidden, dim):
        return dim

    def encoder(self, info, device="cpu", dtype="auto"):
        from .bi_encoder import BiEncoder

        return BiEncoder(info, device=device, dtype=dtype)


class BgeM3Family(BiEncoderFamily):
    """BGE-M3: the dense CLS vector, the multi-vector ``colbert_linear`` head and the ``sparse_linear`` head."""

    name = "bge_m3"
    # SEED vLLM's /pooling default for it is token_embed (the ColBERT vectors), hence the order.
    tasks = ("token_embed", "embed", "token_classify", "embed&token_classify")

    def describe(self, ckpt, served_name, **kwargs):
        info = super().describe(ckpt, served_name, **kwargs)
        return replace(info, sparse=True)

    def output_size(self, ckpt, hidden, projection):
        return _bge_m3_colbert_dim(ckpt, hidden)

    def pooled_size(self, hidden, dim):
        return hidden

    def encoder(self, info, device="cpu", dtype="auto"):
        from .bge_m3 import BgeM3Encoder

        return BgeM3Encoder(info, device=device, dtype=dtype)


def _require_safetensors(ckpt: Checkpoint) -> None:
    if any((ckpt.path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        return
    pickled = [f for f in ("pytorch_model.bin", "model.bin") if (ckpt.path / f).is_file()]
    if pickled:
        raise CheckpointError(
            f"{ckpt.path} holds only pickled weights ({pickled[0]}); trilate loads safetensors only. "
            "Convert them once with safetensors.torch.save_file on a trusted machine."
        )
    raise CheckpointError(f"{ckpt.path} has no model.safetensors")
