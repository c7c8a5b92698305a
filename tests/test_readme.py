"""The README's client example works as written (against the test server's port) and prints what its
comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Client library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_client_example_prints_what_its_comments_say(triton_server):
    code = readme_example().replace("127.0.0.1:8010", triton_server.http_url)
    expected = [line.split("  # ", 1)[1].strip() for line in code.splitlines() if line.startswith("print(")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip().splitlines() == expected
