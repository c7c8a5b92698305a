"""colpali_modes (the opt-in ``embedding_mode`` of ColQwen3 / ColQwen3.5) equals colpali-engine 0.3.18.

What of colpali-engine runs here, and why not more: importing any ``colpali_engine`` module runs the package's
``__init__``, which imports every model's processor, and those (``processing_colqwen3.py`` itself included, for
``smart_resize``) import transformers' torchvision-backed ``image_processing_qwen2_vl``: without torchvision
(never installed here, DESIGN.md fact 4) no colpali-engine processor can be imported, and transformers'
``Qwen3VLProcessor`` they subclass cannot be built either (it insists on the torchvision video processor).  So:

* the processors' conventions are read from colpali-engine's installed source files (``ast``, literals only):
  ``ColQwen3Processor`` / ``ColQwen3_5Processor`` class attributes, ``BaseVisualRetrieverProcessor.query_prefix``,
  the augmentation count in ``process_queries``, the padding side set in ``__init__``;
* ``process_queries`` / ``process_texts`` / ``process_images`` are then replayed step by step as those files and
  ``Qwen3VLProcessor.__call__`` do them, with transformers' own parts: ``AutoTokenizer`` (the checkpoint's
  Qwen2 tokenizer, left padding, ``padding="longest"``), ``Qwen2VLImageProcessorPil`` (the PIL image processor),
  ``<|image_pad|>`` expanded to grid.prod() // merge² tokens (``Qwen3VLProcessor.replace_image_token``), and the
  per-image split + zero padding of ``pixel_values``;
* colpali-engine's model classes run for real: ``modeling_colqwen3.py`` / ``modeling_colqwen3_5.py`` import only
  torch and transformers, so they are loaded from their files (without the package ``__init__``), with their own
  ``from_pretrained`` (key mapping, ``custom_text_proj``) and ``forward`` (un-padding, projection, L2, mask).

Ours: :mod:`python_backend_models.colpali_modes` prompts through ``MultimodalPreprocessor`` (the checkpoint's
``tokenizer.json`` and ``qwen_vl_images``), then ``load_colqwen3`` / ``load_colqwen3_5``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

import tiny_colqwen
import tiny_colqwen35
from python_backend_models import colpali_modes as CM
from python_backend_models import scoring
from python_backend_models.errors import InputError
from python_backend_models.multimodal import MultimodalPreprocessor, QwenVLLayout

ATOL = 1e-5
QUERIES = ["What is on the page shown here?", "revenue"]
TEXT_DOCUMENTS = ["The page shows a bar chart of revenue.", "short"]
# (width, height): two sizes so the batch is padded (ids left, pixel rows at the end).
IMAGE_SIZES = [(96, 64), (48, 80)]

PROCESSORS = {"colqwen3": ("models/qwen3/colqwen3/processing_colqwen3.py", "ColQwen3Processor"),
              "colqwen3_5": ("models/qwen3_5/colqwen3_5/processing_colqwen3_5.py", "ColQwen3_5Processor")}


def _colpali_root() -> Path:
    spec = importlib.util.find_spec("colpali_engine")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("colpali-engine is not installed; `make venv` installs it (requirements-nodeps.lock)")
    return Path(next(iter(spec.submodule_search_locations)))


def _class_literals(relpath: str, class_name: str) -> dict:
    tree = ast.parse((_colpali_root() / relpath).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    out = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = ast.literal_eval(node.value)
    return out, cls


def colpali_conventions(family: str) -> dict:
    """colpali-engine's conventions for ``family``, read from its source files (module docstring)."""
    relpath, name = PROCESSORS[family]
    literals, cls = _class_literals(relpath, name)
    base, base_cls = _class_literals("utils/processing_utils.py", "BaseVisualRetrieverProcessor")
    process_queries = next(n for n in base_cls.body if isinstance(n, ast.FunctionDef) and n.name == "process_queries")
    counts = [n.right.value for n in ast.walk(process_queries) if isinstance(n, ast.BinOp)
              and isinstance(n.op, ast.Mult) and isinstance(n.left, ast.Attribute)
              and n.left.attr == "query_augmentation_token" and isinstance(n.right, ast.Constant)]
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    sides = [n.value.value for n in ast.walk(init) if isinstance(n, ast.Assign)
             and isinstance(n.targets[0], ast.Attribute) and n.targets[0].attr == "padding_side"]
    assert len(counts) == 1 and len(sides) == 1, (counts, sides)
    return {"query_prefix": literals.get("query_prefix", base["query_prefix"]),
            "query_augmentation_token": literals["query_augmentation_token"],
            "query_augmentation_count": counts[0], "image_document_prompt": literals["visual_prompt_prefix"],
            "image_token": literals["image_token"], "padding_side": sides[0]}


def _load_colpali_module(relpath: str):
    path = _colpali_root() / relpath
    spec = importlib.util.spec_from_file_location(f"_colpali_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def colpali_models():
    """colpali-engine's ColQwen3 and ColQwen3_5 classes.  Importing modeling_colqwen3 registers a global
    checkpoint-conversion mapping for model_type "qwen3_vl" (reference/oracles.md §3.4 gotcha 3): undone after."""
    import transformers.conversion_mapping as conversion

    had = conversion.get_checkpoint_conversion_mapping("qwen3_vl") is not None
    q3 = _load_colpali_module("models/qwen3/colqwen3/modeling_colqwen3.py")
    q35 = _load_colpali_module("models/qwen3_5/colqwen3_5/modeling_colqwen3_5.py")
    yield {"colqwen3": q3.ColQwen3, "colqwen3_5": q35.ColQwen3_5}
    if not had:
        conversion._checkpoint_conversion_mapping_cache.pop("qwen3_vl", None)
        conversion.USER_REGISTERED_MAPPINGS.discard("qwen3_vl")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tomoro-layout ColQwen3 (320 outputs: colpali-engine's ColQwen3 hard-codes them) and a causal ColQwen3.5
    (colpali-engine runs Qwen3_5Model as built, causal)."""
    root = tmp_path_factory.mktemp("colpali")
    return {"colqwen3": tiny_colqwen.write_colqwen3(root / "colqwen3", "tomoro", dim=320),
            "colqwen3_5": tiny_colqwen35.write_colqwen3_5(root / "colqwen3_5", contract="causal")}


def _image(width: int, height: int, seed: int):
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3)).astype(np.uint8))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [_image(w, h, seed) for seed, (w, h) in enumerate(IMAGE_SIZES)]


# -- colpali-engine's processor, replayed (module docstring) -------------------------------------------------------
def colpali_process(path: Path, family: str, *, queries=None, texts=None, images=None) -> dict:
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    conv = colpali_conventions(family)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = conv["padding_side"]
    out = {}
    if queries is not None:  # process_queries -> process_texts
        prompts = [conv["query_prefix"] + q + conv["query_augmentation_token"] * conv["query_augmentation_count"]
                   for q in queries]
    elif texts is not None:  # process_texts
        prompts = list(texts)
    else:  # process_images
        settings = json.loads((path / "preprocessor_config.json").read_text())
        settings = {k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")}
        processor = Qwen2VLImageProcessorPil(**settings)
        pixels = processor([im.convert("RGB") for im in images], return_tensors="pt")
        merge = processor.merge_size
        prompts = [conv["image_document_prompt"].replace(
            conv["image_token"], conv["image_token"] * (int(grid.prod()) // merge**2)) for grid in pixels["image_grid_thw"]]
        offsets = (pixels["image_grid_thw"][:, 1] * pixels["image_grid_thw"][:, 2]).tolist()
        out["pixel_values"] = torch.nn.utils.rnn.pad_sequence(list(torch.split(pixels["pixel_values"], offsets)),
                                                              batch_first=True)
        out["image_grid_thw"] = pixels["image_grid_thw"]
    out.update(tokenizer(prompts, padding="longest", return_tensors="pt"))
    if images is not None:
        out["mm_token_type_ids"] = (out["input_ids"] == tokenizer.convert_tokens_to_ids(conv["image_token"])).int()
    return out


# -- ours ----------------------------------------------------------------------------------------------------------
def _preprocessor(path: Path) -> MultimodalPreprocessor:
    image_token_id = json.loads((path / "config.json").read_text())["image_token_id"]
    return MultimodalPreprocessor(path, 4096, QwenVLLayout(path, image_token_id), chat_template=None)


def ours(path: Path, family: str, *, queries=None, texts=None, images=None):
    """[(input_ids (n,), pixel_values (rows, patch_dim), image_grid_thw (k, 3))] per item."""
    if queries is not None:
        prompts, files = [CM.query_prompt(q, family) for q in queries], [[] for _ in queries]
    elif texts is not None:
        prompts, files = [CM.document_prompt([t], 0, family) for t in texts], [[] for _ in texts]
    else:
        prompts, files = [CM.document_prompt([], 1, family) for _ in images], [[_png(im)] for im in images]
    done = _preprocessor(path)._encode_texts(prompts, files, truncate_prompt_tokens=None, truncation_side="right",
                                              add_special_tokens=True, purpose="embedding")
    n = done.encoded.prompt_tokens
    return [(done.encoded.input_ids[i, :n[i]], done.pixel_values[i], done.image_sizes[i]) for i in range(len(n))]


def _unpadded(batch: dict, i: int) -> np.ndarray:
    return batch["input_ids"][i][batch["attention_mask"][i].bool()].numpy()


FAMILIES = ["colqwen3", "colqwen3_5"]


@pytest.mark.parametrize("family", FAMILIES)
def test_conventions_are_colpali_engine_0_3_18s_as_its_source_spells_them(family):
    assert importlib.metadata.version("colpali-engine") == CM.COLPALI_ENGINE_VERSION
    conv = CM.conventions(family)
    want = colpali_conventions(family)
    assert {k: getattr(conv, k) for k in want} == want
    assert conv.processor == PROCESSORS[family][1]
    assert CM.IMAGE_PLACEHOLDER in conv.image_document_prompt


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["queries", "texts"])
def test_query_and_text_document_ids_equal_process_queries_and_process_texts(checkpoints, family, side):
    path = checkpoints[family]
    items = QUERIES if side == "queries" else TEXT_DOCUMENTS
    theirs = colpali_process(path, family, **{side: items})
    assert theirs["attention_mask"][1, 0] == 0 < theirs["attention_mask"][0, 0]  # left padding
    for i, (ids, pixels, grids) in enumerate(ours(path, family, **{side: items})):
        np.testing.assert_array_equal(ids, _unpadded(theirs, i))
        assert pixels.shape[0] == 0 and grids.shape[0] == 0
    if side == "queries":
        pad = CM.conventions(family).query_augmentation_token
        assert ours(path, family, queries=["x"])[0][0][-10:].tolist() == [theirs["input_ids"][0, -1].item()] * 10
        assert theirs["input_ids"][0, -1].item() == Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id(pad)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_document_ids_pixels_and_grids_equal_process_images(checkpoints, family):
    path = checkpoints[family]
    theirs = colpali_process(path, family, images=IMAGES)
    mine = ours(path, family, images=IMAGES)
    for i, (ids, pixels, grids) in enumerate(mine):
        np.testing.assert_array_equal(ids, _unpadded(theirs, i))
        np.testing.assert_array_equal(grids, theirs["image_grid_thw"][i:i + 1].numpy())
        rows = int(grids[0, 1] * grids[0, 2])
        np.testing.assert_array_equal(pixels, theirs["pixel_values"][i, :rows].numpy())
        assert not theirs["pixel_values"][i, rows:].any()  # colpali's zero padding, dropped by its forward
    assert mine[0][2].tolist() != mine[1][2].tolist()


def _colpali_model(colpali_models, family: str, path: Path):
    from transformers import Qwen3VLConfig

    cls = colpali_models[family]
    kwargs = {"dtype": torch.float32, "attn_implementation": "eager", "output_loading_info": True}
    if family == "colqwen3":
        # colpali-engine's from_pretrained maps ``model.*`` / ``base_model.model.*``; Tomoro's ``vlm.model.*`` and
        # ``embedding_proj_layer`` go through its key_mapping argument.  The config is given as a Qwen3VLConfig
        # because config.json's model_type is Tomoro's "colqwen3" (read as such, from_pretrained would build a
        # default-sized Qwen3-VL).
        raw = json.loads((path / "config.json").read_text())
        ids = {k: raw[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
        kwargs["config"] = Qwen3VLConfig(text_config=raw["text_config"], vision_config=raw["vision_config"], **ids)
        kwargs["key_mapping"] = {r"^vlm\.model\.": "", r"^embedding_proj_layer": "custom_text_proj"}
    model, info = cls.from_pretrained(str(path), **kwargs)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert set(info["unexpected_keys"]) <= {"vlm.lm_head.weight"}, info
    return model.eval()


def _our_model(family: str, path: Path):
    if family == "colqwen3":
        from python_backend_models.families.colqwen3 import load_colqwen3

        return load_colqwen3(path, attn_implementation="eager")
    from python_backend_models.families.colqwen3_5 import load_colqwen3_5

    return load_colqwen3_5(path, dtype=torch.float32, attn_implementation="eager")


@pytest.mark.parametrize("family", FAMILIES)
def test_query_and_image_document_vectors_equal_colpali_engines_model(checkpoints, colpali_models, family,
                                                                     monkeypatch):
    """Left-padded colpali batches through colpali-engine's forward == our prompts one by one through ours; and
    its scores as _check_scores says."""
    monkeypatch.setenv("COLPALI_SCORES_BACKEND", "torch")  # "auto" would import the LIK backend (package __init__)
    path = checkpoints[family]
    theirs_model = _colpali_model(colpali_models, family, path)
    mine_model = _our_model(family, path)
    vectors = {}
    for side, items in (("queries", QUERIES), ("images", IMAGES)):
        batch = colpali_process(path, family, **{side: items})
        theirs_model.rope_deltas = None
        with torch.no_grad():
            theirs = theirs_model(**batch)
        assert theirs.shape[-1] == mine_model.dim
        for i, (ids, pixels, grids) in enumerate(ours(path, family, **{side: items})):
            kwargs = {}
            if side == "images":
                kwargs = {"pixel_values": torch.from_numpy(pixels), "image_grid_thw": torch.from_numpy(grids)}
            input_ids = torch.from_numpy(ids)[None]
            with torch.no_grad():
                mine = mine_model(input_ids, torch.ones_like(input_ids), **kwargs)[0]
            keep = batch["attention_mask"][i].bool()
            assert not theirs[i][~keep].any()  # colpali's pads: exact zero vectors
            torch.testing.assert_close(mine, theirs[i][keep], atol=ATOL, rtol=0)
            vectors.setdefault(side, []).append((mine.numpy(), theirs[i]))
    _check_scores(vectors["queries"], vectors["images"])


def _check_scores(queries, documents):
    """colpali-engine's score_multi_vector (its torch MaxSim, ``utils/maxsim.py``, on the zero-padded batch) vs
    trilate's MaxSim on the unpadded vectors: equal, except that a document shorter than the longest in the batch
    has zero pad rows that clamp each query token's best at 0."""
    maxsim = _load_colpali_module("utils/maxsim.py").maxsim_inbatch
    pad = torch.nn.utils.rnn.pad_sequence
    theirs = maxsim(pad([q for _, q in queries], batch_first=True), pad([d for _, d in documents], batch_first=True))
    longest = max(len(d) for d, _ in documents)
    for i, (q, _) in enumerate(queries):
        for j, (d, _) in enumerate(documents):
            best = (q @ d.T).max(axis=1)
            want = scoring.maxsim(q, d) if len(d) == longest else float(np.maximum(best, 0).sum())
            assert abs(float(theirs[i, j]) - want) < 1e-4, (i, j, float(theirs[i, j]), want)


def test_document_prompt_refuses_what_colpali_engine_has_no_convention_for():
    assert CM.document_prompt(["a", "b"], 0) == "a\nb"
    assert CM.document_prompt([], 1, "colqwen3_5") == CM.IMAGE_DOCUMENT_PROMPT
    with pytest.raises(InputError, match="without text parts"):
        CM.document_prompt(["Describe the image."], 1)
    with pytest.raises(InputError, match="one image per document"):
        CM.document_prompt([], 2)
    with pytest.raises(InputError, match="only available for"):
        CM.query_prompt("q", "colbert")


def test_colpali_engine_runs_colqwen3_5_causal_whatever_retrieval_attention_contract_says(tmp_path, colpali_models):
    """colpali-engine never reads ``retrieval_attention_contract``: on a bidirectional checkpoint its vectors are
    our causal ones (the same weights with the contract overridden), not our bidirectional ones."""
    from python_backend_models.families.colqwen3_5 import load_colqwen3_5

    path = tiny_colqwen35.write_colqwen3_5(tmp_path / "bidirectional", contract="bidirectional")
    batch = colpali_process(path, "colqwen3_5", queries=QUERIES[:1])
    with torch.no_grad():
        theirs = _colpali_model(colpali_models, "colqwen3_5", path)(**batch)[0]
    ids = torch.from_numpy(ours(path, "colqwen3_5", queries=QUERIES[:1])[0][0])[None]
    vectors = {}
    for contract in ("causal", "bidirectional"):
        model = load_colqwen3_5(path, overrides={"retrieval_attention_contract": contract}, dtype=torch.float32,
                                attn_implementation="eager")
        with torch.no_grad():
            vectors[contract] = model(ids, torch.ones_like(ids))[0]
    torch.testing.assert_close(vectors["causal"], theirs, atol=ATOL, rtol=0)
    assert (vectors["bidirectional"] - theirs).abs().max() > 1e-3
