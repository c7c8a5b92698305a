"""Regenerate ``seed_commands.json`` from the seed document (run by hand when the seed changes; the tests read
only the JSON, so they run wherever the repository is cloned).

    .venv/bin/python tests/data/make_seed_data.py ../shared/seed/vllm_specific_models.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def extract(text: str) -> dict:
    commands = []
    for block in re.findall(r"```shell\n(.*?)```", text, re.S):
        if not block.lstrip().startswith("curl"):
            continue
        route = re.search(r"http://localhost:8000(/[\w/]+)", block).group(1)
        body = json.loads(re.search(r"-d '(.*)'", block, re.S).group(1))
        multimodal = "image_url" in block or "<BASE64" in block
        key = f"{route}-{body['model']}-{body.get('task', '')}".rstrip("-") + ("-multimodal" if multimodal else "")
        commands.append({"key": key, "route": route, "multimodal": multimodal, "command": block.strip(),
                         "body": body})
    architectures = set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", text, re.M))
    architectures |= set(re.findall(r'"architectures": \["([A-Za-z0-9_]+)"\]', text))
    return {"source": "shared/seed/vllm_specific_models.md (vLLM-specific pooling models: curl commands and "
                      "architectures)",
            "architectures": sorted(architectures), "curl_commands": commands}


def main() -> None:
    source = Path(sys.argv[1])
    out = Path(__file__).with_name("seed_commands.json")
    out.write_text(json.dumps(extract(source.read_text(encoding="utf-8")), indent=1, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
