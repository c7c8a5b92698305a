"""The generated Triton model repository: schema-valid configs, deterministic output, thin shims and
ensembles whose wiring Triton will accept (every step, tensor name, data type and shape checked)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fake_pb_utils
from python_backend_models import contract as C
from python_backend_models.config import parse_pbtxt, to_pbtxt
from python_backend_models.repository import ServeSpec, build_repository

COLBERT_OVERRIDES = {"architectures": ["HF_ColBERT"]}
SHIM = re.compile(r"from (python_backend_models\.triton\.\w+) import (\w+) as TritonPythonModel(  # noqa: F401)?\n")


def specs(stanford: Path, pylate: Path) -> list[ServeSpec]:
    """The default MiniLM plus both ColBERT layouts with query/document score modes."""
    return [
        ServeSpec(),
        ServeSpec(model=str(stanford), served_name="tiny/stanford-colbert", colbert_score_modes=True),
        ServeSpec(model=str(pylate), served_name="tiny/pylate-colbert", hf_overrides=COLBERT_OVERRIDES,
                  colbert_score_modes=True),
    ]


@pytest.fixture(scope="module")
def builds(tmp_path_factory, stanford_colbert, pylate_colbert) -> tuple[Path, Path]:
    first = tmp_path_factory.mktemp("repository_a")
    second = tmp_path_factory.mktemp("repository_b")
    build_repository(specs(stanford_colbert, pylate_colbert), first)
    build_repository(specs(stanford_colbert, pylate_colbert), second)
    return first, second


@pytest.fixture(scope="module")
def repository(builds) -> Path:
    return builds[0]


@pytest.fixture(scope="module")
def configs(repository):
    return {folder.name: parse_pbtxt((folder / "config.pbtxt").read_text(encoding="utf-8"))
            for folder in sorted(repository.iterdir()) if folder.is_dir()}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under ``root``, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def ensembles(configs):
    return {name: cfg for name, cfg in configs.items() if cfg.platform == "ensemble"}


def full_shape(config, tensor) -> list[int]:
    """The shape Triton checks across an ensemble: the batch dimension first when the model batches."""
    return ([-1] if config.max_batch_size > 0 else []) + list(tensor.dims)


def shapes_compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------


def test_repository_holds_every_stage_and_ensemble_of_every_served_model(configs):
    for model in ("sentence-transformers--all-MiniLM-L6-v2", "tiny--stanford-colbert", "tiny--pylate-colbert"):
        for suffix in ("", "__preprocess", "__encoder", "__score"):
            assert model + suffix in configs
    for model in ("tiny--stanford-colbert", "tiny--pylate-colbert"):
        assert {model + "__preprocess_query", model + "__preprocess_document"} <= set(configs)
    assert {C.MAXSIM_MODEL, C.COSINE_MODEL} <= set(configs)


def test_every_config_parses_with_tritons_schema_and_round_trips(repository, configs):
    assert configs
    for name, config in configs.items():
        text = (repository / name / "config.pbtxt").read_text(encoding="utf-8")
        assert to_pbtxt(config) == text, name
        assert config.name == name, "Triton requires the config name to equal the folder name"
        assert config.backend == "python" or config.platform == "ensemble"


def test_every_model_folder_has_a_version_directory(repository, configs):
    for name in configs:
        assert (repository / name / "1").is_dir(), name


def test_two_builds_are_byte_identical(builds):
    first, second = builds
    assert snapshot(first) == snapshot(second)


def test_rebuilding_into_the_same_folder_changes_nothing(builds, stanford_colbert, pylate_colbert):
    repository = builds[1]
    before = snapshot(repository)
    build_repository(specs(stanford_colbert, pylate_colbert), repository)
    assert snapshot(repository) == before


def test_rebuilding_with_fewer_models_removes_the_stale_ones_only(tmp_path, stanford_colbert, pylate_colbert):
    build_repository(specs(stanford_colbert, pylate_colbert), tmp_path)
    (tmp_path / "README.md").write_text("kept\n")
    build_repository([ServeSpec(model=str(stanford_colbert), served_name="tiny/stanford-colbert")], tmp_path)
    names = {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert names == {"tiny--stanford-colbert", "tiny--stanford-colbert__preprocess", "tiny--stanford-colbert__encoder",
                     "tiny--stanford-colbert__score", *C.SHARED_STAGES}
    assert (tmp_path / "README.md").read_text() == "kept\n"


def test_every_model_py_is_a_one_line_shim_to_an_existing_adapter_class(repository, configs):
    shims = sorted(repository.glob("*/1/model.py"))
    python_models = {name for name, cfg in configs.items() if cfg.backend == "python"}
    assert {p.parent.parent.name for p in shims} == python_models
    with fake_pb_utils.installed():
        for shim in shims:
            text = shim.read_text(encoding="utf-8")
            match = SHIM.fullmatch(text)
            assert match, f"{shim}: {text!r}"
            # Load by path, as the Python-backend stub does.
            spec = importlib.util.spec_from_file_location(f"shim_{shim.parent.parent.name}", shim)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            cls = module.TritonPythonModel
            assert isinstance(cls, type) and cls.__name__ == match.group(2)
            assert cls.__module__ == match.group(1)
            assert callable(cls.initialize) and callable(cls.execute)


def test_ensembles_have_no_model_py(repository, configs):
    for name in ensembles(configs):
        assert not (repository / name / "1" / "model.py").exists()


def test_every_ensemble_step_names_an_existing_model_and_its_real_tensors(configs):
    for name, ensemble in ensembles(configs).items():
        steps = ensemble.ensemble_scheduling.step
        assert steps, name
        for step in steps:
            assert step.model_name in configs, f"{name}: step model {step.model_name!r} is not in the repository"
            model = configs[step.model_name]
            inputs = {t.name: t for t in model.input}
            outputs = {t.name for t in model.output}
            where = f"{name} -> {step.model_name}"
            assert set(step.input_map) <= set(inputs), f"{where}: {set(step.input_map) - set(inputs)}"
            assert set(step.output_map) <= outputs, f"{where}: {set(step.output_map) - outputs}"
            required = {n for n, t in inputs.items() if not t.optional}
            assert required <= set(step.input_map), f"{where}: unfed {required - set(step.input_map)}"


def test_every_ensemble_tensor_is_produced_before_use_with_matching_type_and_shape(configs):
    for name, ensemble in ensembles(configs).items():
        available = {t.name: (ensemble, t) for t in ensemble.input}
        for step in ensemble.ensemble_scheduling.step:
            model = configs[step.model_name]
            inputs = {t.name: t for t in model.input}
            for key, wire in step.input_map.items():
                assert wire in available, f"{name}: {wire!r} feeds {step.model_name} before anything produces it"
                source_cfg, source = available[wire]
                assert source.data_type == inputs[key].data_type, f"{name}: {wire} -> {step.model_name}.{key}"
                assert shapes_compatible(full_shape(source_cfg, source), full_shape(model, inputs[key])), (
                    f"{name}: {wire} {full_shape(source_cfg, source)} -> {step.model_name}.{key} "
                    f"{full_shape(model, inputs[key])}")
            outputs = {t.name: t for t in model.output}
            for key, wire in step.output_map.items():
                assert wire not in available, f"{name}: {wire!r} is produced twice"
                available[wire] = (model, outputs[key])
        for out in ensemble.output:
            assert out.name in available, f"{name}: output {out.name!r} is never produced"
            source_cfg, source = available[out.name]
            assert source.data_type == out.data_type
            assert shapes_compatible(full_shape(source_cfg, source), full_shape(ensemble, out)), (
                f"{name}: output {out.name} {full_shape(source_cfg, source)} vs {full_shape(ensemble, out)}")


def test_intermediate_ensemble_tensors_start_with_an_underscore(configs):
    for name, ensemble in ensembles(configs).items():
        public = {t.name for t in ensemble.input} | {t.name for t in ensemble.output}
        wires = set()
        for step in ensemble.ensemble_scheduling.step:
            wires |= set(step.input_map.values()) | set(step.output_map.values())
        intermediate = wires - public
        assert intermediate, name
        assert all(w.startswith("_") for w in intermediate), f"{name}: {sorted(intermediate)}"
        assert not any(p.startswith("_") for p in public), f"{name}: public tensor named like an intermediate"


def test_colbert_score_ensembles_use_the_query_and_document_preprocessors(configs):
    for model in ("tiny--stanford-colbert", "tiny--pylate-colbert"):
        steps = [s.model_name for s in configs[model + "__score"].ensemble_scheduling.step]
        assert steps == [model + "__preprocess_query", model + "__encoder", model + "__preprocess_document",
                         model + "__encoder", C.MAXSIM_MODEL]
        for side in ("query", "document"):
            params = configs[f"{model}__preprocess_{side}"].parameters
            assert params["embedding_mode"].string_value == side
    minilm = [s.model_name for s in configs["sentence-transformers--all-MiniLM-L6-v2__score"].ensemble_scheduling.step]
    assert minilm[-1] == C.COSINE_MODEL


def test_model_card_parameter_describes_the_served_model(configs):
    from python_backend_models.registry import ModelInfo

    card = ModelInfo.from_json(configs["tiny--pylate-colbert"].parameters[C.MODEL_CARD_PARAMETER].string_value)
    assert (card.served_name, card.architecture, card.dim, card.embedding_modes) == (
        "tiny/pylate-colbert", "HF_ColBERT", 16, True)
    assert card == ModelInfo.from_json(configs["tiny--pylate-colbert__encoder"].parameters["model_card"].string_value)


def _decode_triton_name(name: str) -> str:
    """The inverse of ``contract.triton_name``, written from its docstring (so the test proves it is one-to-one)."""
    out, i = bytearray(), 0
    while i < len(name):
        if name.startswith("--", i):
            out += b"/"
            i += 2
        elif name[i] == "_":
            out.append(int(name[i + 1:i + 3], 16))
            i += 3
        else:
            out += name[i].encode("ascii")
            i += 1
    return out.decode("utf-8")


@given(st.text(min_size=1, max_size=24))
@settings(max_examples=400, deadline=None)
def test_triton_names_are_one_to_one_and_never_hold_the_stage_separator(served):
    name = C.triton_name(served)
    assert "__" not in name and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*|_[0-9a-f]{2}[A-Za-z0-9._-]*", name)
    assert _decode_triton_name(name) == served


def test_names_that_used_to_collide_get_their_own_triton_names():
    assert C.triton_name("answerdotai/answerai-colbert-small-v1") == "answerdotai--answerai-colbert-small-v1"
    assert C.triton_name("a__score") != C.stage_name(C.triton_name("a"), "score")
    for first, second in (("a/b", "a--b"), ("a b", "a_b"), ("acme/mini__lm", "acme/mini_lm")):
        assert C.triton_name(first) != C.triton_name(second)
    assert "__" not in C.triton_name("acme/mini__lm")


def test_served_names_of_one_build_are_kept_apart(tmp_path, stanford_colbert):
    infos = build_repository([ServeSpec(model=str(stanford_colbert), served_name="a"),
                              ServeSpec(model=str(stanford_colbert), served_name="a__score")], tmp_path)
    assert [i.served_name for i in infos] == ["a", "a__score"]
    assert (tmp_path / "a__score" / "config.pbtxt").is_file() and (tmp_path / "a_5f_5fscore" / "config.pbtxt").is_file()


def test_a_chat_template_that_does_not_compile_or_render_stops_the_build_naming_it(tmp_path, nemotron_rerank):
    from python_backend_models.checkpoint import CheckpointError
    from python_backend_models.repository import ServeSpec, build_repository

    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] }")  # an unclosed tag
    with pytest.raises(CheckpointError, match=r"broken\.jinja.*does not compile: line 1"):
        build_repository([ServeSpec(model=str(nemotron_rerank), chat_template=str(broken))], tmp_path / "r1")
    refuses = tmp_path / "refuses.jinja"
    refuses.write_text("{{ raise_exception('this template only takes role user') }}")
    with pytest.raises(CheckpointError, match="refuses.jinja: this template only takes role user"):
        build_repository([ServeSpec(model=str(nemotron_rerank), chat_template=str(refuses))], tmp_path / "r2")


def test_colqwen_score_modes_get_image_capable_query_and_document_stages(tmp_path, colqwen3_tomoro):
    from python_backend_models import contract as C
    from python_backend_models.config import parse_pbtxt
    from python_backend_models.repository import ServeSpec, build_repository

    build_repository([ServeSpec(model=str(colqwen3_tomoro), served_name="cq", colbert_score_modes=True)],
                     tmp_path / "repo")
    for mode in ("query", "document"):
        config = parse_pbtxt((tmp_path / "repo" / f"cq__preprocess_{mode}" / "config.pbtxt").read_text())
        assert C.IMAGES in [i.name for i in config.input] and config.parameters["embedding_mode"].string_value == mode
    score = parse_pbtxt((tmp_path / "repo" / "cq__score" / "config.pbtxt").read_text())
    steps = [s.model_name for s in score.ensemble_scheduling.step]
    assert steps[0] == "cq__preprocess_query" and "cq__preprocess_document" in steps
