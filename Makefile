# Set-up and everyday commands. Every target creates or updates .venv first.
#   make demo   the main job on the embedded default (CPU, no network, no downloads)
#   make test   lint, type-check and the fast test suite (what CI runs)
#   make test-ray  the Ray tests (installs qlass[ray]; local Ray clusters, minutes)
#   make lock   refresh requirements/*.lock (pinned, with hashes) after changing pyproject.toml

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The lock the install uses: every package of qlass[dev] pinned with its hashes, for
# CPython 3.11 on Linux x86_64 (torch: the CPU wheel 2.13.0+cpu). `make LOCK= ...` installs
# from pyproject.toml's ranges instead (another platform or Python).
LOCK ?= requirements/dev.lock
# Where `make lock` finds the CPU build of torch: the wheel folder pip is told about
# (PIP_FIND_LINKS, as on the CI machines), else the PyTorch CPU index.
TORCH_CPU_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(firstword $(PIP_FIND_LINKS)),\
	--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes -c constraints/cpu.txt \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 $(TORCH_CPU_SOURCE) \
	--custom-compile-command 'make lock'

.PHONY: demo test test-ray lint typecheck pytest bench docs lock clean

# pip reads constraints/cpu.txt (and the lock pins torch==2.13.0+cpu) so that torch is the
# CPU wheel, not a multi-GB CUDA build. On a GPU machine install qlass into an env that
# already has torch (`make LOCK= ...` or pip install -e '.[dev]').
$(STAMP): pyproject.toml constraints/cpu.txt $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "qlass needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(LOCK),$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK) && \
		$(BIN)/python -m pip install --quiet --no-deps -e .,\
		$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[dev]')
	touch $(STAMP)

# Both locks from pyproject.toml: dev.lock (what make installs) and core.lock (the light
# install, `pip install qlass` with no extras; tests/examples/test_light_install.py uses
# it). uv is a dev tool only, installed into .venv for this.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet 'uv>=0.5'
	$(COMPILE) --extra dev -o requirements/dev.lock
	$(COMPILE) -o requirements/core.lock

demo: $(STAMP)
	$(BIN)/qlass demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check qlass tests benchmarks examples scripts
	$(BIN)/ruff format --check qlass tests benchmarks examples scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	scripts/ensure-test-deps.sh
	$(BIN)/python -m pytest

# Ray is an extra (a 76 MiB wheel): installed here, not by `make test`, whose suite skips
# the Ray tests without it. Compiled after install: Ray's helpers time out starting from
# uncompiled sources on a loaded machine (docs/scale-out.md).
test-ray: $(STAMP)
	scripts/ensure-test-deps.sh
	$(BIN)/python -c 'import ray' 2>/dev/null || { \
		$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[ray]' && \
		$(BIN)/python -m compileall -q $$($(BIN)/python -c 'import os, ray; print(os.path.dirname(ray.__file__))'); }
	$(BIN)/python -m pytest -m 'ray or not (slow or gpu or paid)' tests/ray -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# API reference (mkdocstrings, from the docstrings) and guides, into site/.
docs: $(STAMP)
	$(BIN)/python -c 'import mkdocs, mkdocstrings_handlers.python, material' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
