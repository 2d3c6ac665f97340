# Set-up and everyday commands. Every target creates or updates .venv first.
#   make demo   the main job on the embedded default (CPU, no network, no downloads)
#   make test   lint, type-check and the fast test suite (what CI runs)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench docs clean

# pip reads constraints/cpu.txt so that torch resolves to the CPU wheel (2.13.0), not a
# multi-GB CUDA build. On a GPU machine install qlass into an env that already has torch.
$(STAMP): pyproject.toml constraints/cpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "qlass needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qlass demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check qlass tests benchmarks examples
	$(BIN)/ruff format --check qlass tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	scripts/ensure-test-deps.sh
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# API reference (mkdocstrings, from the docstrings) and guides, into site/.
docs: $(STAMP)
	$(BIN)/python -c 'import mkdocs, mkdocstrings_handlers.python, material' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
