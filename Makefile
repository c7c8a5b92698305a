# The two commands of the README: `make serve` and `make test`. Both set up everything first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test venv repo clean lock bench soak

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==24.3.1"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# Serve the default model (sentence-transformers/all-MiniLM-L6-v2) until Ctrl-C.
serve: $(STAMP)
	$(BIN)/trilate serve $(MODEL) --model-repository model_repository $(SERVE_ARGS)

# Every test this machine can run, tritonserver included.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Write the default model's repository to model_repository/ without serving.
repo: $(STAMP)
	$(BIN)/trilate build-repo $(MODEL) --output model_repository

# The REST front end's added latency over direct tritonclient calls (starts its own server).
bench: $(STAMP)
	$(BIN)/python bench/frontend_latency.py $(BENCH_ARGS)

# Ten minutes of mixed REST load at concurrency 32 on the default model; memory and failures reported
# (bench/results/soak-*.md). SOAK_ARGS="--duration 60 --concurrency 8" for a shorter one.
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

lock: $(STAMP)
	{ echo "# Every package the project's environment holds, pinned. Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --all --exclude-editable | grep -v "^pip==" | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements.lock

clean:
	rm -rf $(VENV) .trilate build *.egg-info
