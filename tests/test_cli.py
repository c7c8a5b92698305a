"""The ``trilate`` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TRILATE = str(Path(sys.executable).parent / "trilate")


def run(*args, env=None, timeout=120):
    return subprocess.run([TRILATE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_unknown_architecture_override_is_refused_with_the_known_list(tmp_path, stanford_colbert):
    out = run("build-repo", str(stanford_colbert), "--hf-overrides", '{"architectures": ["NoSuchModel"]}',
              "--output", str(tmp_path / "repo"))
    assert out.returncode != 0
    assert "unknown architecture 'NoSuchModel'" in out.stderr and "HF_ColBERT" in out.stderr


def test_missing_folder_and_offline_hub_id_name_the_local_folder_alternative(tmp_path):
    out = run("build-repo", str(tmp_path / "nope"), "--output", str(tmp_path / "repo"))
    assert out.returncode != 0 and "does not exist" in out.stderr
    out = run("build-repo", "someorg/some-model", "--output", str(tmp_path / "repo"), env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0 and "pass DIR instead" in out.stderr


def test_build_repo_reports_each_model(tmp_path, stanford_colbert):
    out = run("build-repo", str(stanford_colbert), "--served-model-name", "my/colbert", "--output", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "my/colbert: HF_ColBERT (late-interaction, dim 16" in out.stdout
    assert (tmp_path / "r" / "my--colbert__score" / "config.pbtxt").is_file()


@pytest.mark.server
def test_serve_with_no_model_serves_the_default_model_until_interrupted(tmp_path):
    from trilate import TrilateClient
    from trilate.launch import ServeProcess

    served = ServeProcess(["--model-repository", str(tmp_path / "repo")], timeout=300)
    try:
        client = TrilateClient(served.grpc_url, protocol="grpc")
        vec = client.embed(None, "What is machine learning?").matrix()[0]
        assert vec.shape == (384,) and abs(vec[0] - (-0.0199545)) < 1e-6
    finally:
        code = served.stop()
    assert code == 0
