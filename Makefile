# The two commands of the README: `make serve` and `make test`. Both set up everything first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test venv repo clean lock bench bench-frontend perf-analyzer chromium soak vl-memory

venv: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==24.3.1"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# requirements-nodeps.lock declares dependencies that must stay out (see the file), which pip check would
	@# flag: check without them (a rebuilt venv may hold them), then add them with --no-deps.
	$(BIN)/python -m pip uninstall --quiet --yes -r requirements-nodeps.lock 2>/dev/null || true
	$(BIN)/python -m pip check
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.lock
	@touch $(STAMP)

# Serve the default model (sentence-transformers/all-MiniLM-L6-v2) until Ctrl-C.
serve: $(STAMP)
	$(BIN)/trilate serve $(MODEL) --model-repository model_repository $(SERVE_ARGS)

# Every test this machine can run, tritonserver and a headless browser included.
test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Write the default model's repository to model_repository/ without serving.
repo: $(STAMP)
	$(BIN)/trilate build-repo $(MODEL) --output model_repository

# trilate against the in-process libraries, perf_analyzer included (starts its own server, ~18 min on 2 cores):
# writes bench/results/<date>-<host>.{md,json,png} and the README's performance table.
bench: $(STAMP) perf-analyzer
	$(BIN)/python bench/bench.py --readme README.md $(BENCH_ARGS)

# The REST front end's added latency over direct tritonclient calls (starts its own server).
bench-frontend: $(STAMP)
	$(BIN)/python bench/frontend_latency.py $(BENCH_ARGS)

# Debian's headless Chromium for the /docs browser test (tests/test_docs_page.py), installed when absent
# (as root, ~30 s): the version pinned here, or Debian's current one (with a warning) once its security archive
# has replaced the pin.
CHROMIUM_VERSION ?= 156.0.8078.114-1~deb12u1
CHROMIUM_BIN ?= chromium
chromium:
	@command -v $(CHROMIUM_BIN) >/dev/null || { apt-get update -qq && { \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      "chromium=$(CHROMIUM_VERSION)" "chromium-common=$(CHROMIUM_VERSION)" || { \
	    echo "warning: chromium $(CHROMIUM_VERSION) is no longer served; installing Debian's current chromium"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }; }; } \
	  || { echo "error: could not install chromium (as root, with apt); see CHROMIUM_VERSION in the Makefile"; exit 1; }

# The real perf_analyzer binary in .trilate/perf_analyzer/ (pip and apt-get download; idempotent).
perf-analyzer: $(STAMP)
	bash bench/install_perf_analyzer.sh $(BIN)/python
# Ten minutes of mixed REST load at concurrency 32 on the default model; memory and failures reported
# (bench/results/soak-*.md). SOAK_ARGS="--duration 60 --concurrency 8" for a shorter one.
soak: $(STAMP) perf-analyzer
	$(BIN)/python bench/soak.py --perf-analyzer .trilate/perf_analyzer/run --readme README.md $(SOAK_ARGS)

# Peak memory of a real-sized ColQwen3 (tomoro-colqwen3-embed-4b's configuration, random bf16 weights, ~9 GB written
# once under $TRILATE_CACHE or .trilate-cache/) served with --dtype bfloat16, and its load / one-page times; writes
# bench/results/vl-memory-<date>-<host>.json and the README's vl-memory block (~15 min on 2 cores; 16 GB free RAM).
vl-memory: $(STAMP)
	$(BIN)/python bench/vl_memory.py --readme README.md $(VL_MEMORY_ARGS)

lock: $(STAMP)
	{ echo "# Every package the project's environment holds, pinned. Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --all --exclude-editable | grep -v "^pip==" | grep -v -x -F -f requirements-nodeps.lock \
	    | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements.lock

clean:
	rm -rf $(VENV) .trilate build *.egg-info
