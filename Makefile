# housebox: `make demo` runs the pipeline on the built-in corpus, `make test` runs the test suite.
# Both create the virtual environment and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.housebox-installed
SYSTEM_PACKAGES := espeak-ng chromium

.PHONY: demo test test-demo test-fast install system-deps bench realmusic gpu-check clean

install: $(STAMP)

# torch==2.13.0 goes first: it is the CPU wheel; the project's range then installs nothing more.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,av]'
	touch $(STAMP)

# Debian packages the tests use: espeak-ng (speech for the vocal-removal test), chromium (browser test).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(BIN)/housebox demo -o demo

# The full demo (14 minutes on a CPU with native bf16, about 40 on an AVX2-only one) has its own target,
# so that `make test` stays under 30 minutes on every CPU; the quick demo end to end stays in `make test`.
test: $(STAMP) system-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not demo"

test-demo: $(STAMP)
	$(BIN)/python -m pytest -q -m demo

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# On a CUDA machine (under 8 minutes): the `cuda` tests, peak training memory of `jukebox`-shaped models
# against `housebox plan`, GPU sampling speed; one markdown table. Without CUDA: one line, exit 0.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

# The real-music development set (Debian's free game music, never committed) and the end-to-end bench on it.
realmusic: $(STAMP)
	$(BIN)/python bench/fetch_realmusic.py -o $(HOME)/.cache/housebox/realmusic
	$(BIN)/python bench/bench_realmusic.py --music $(HOME)/.cache/housebox/realmusic --minutes 40

clean:
	rm -rf $(VENV) demo build *.egg-info src/*.egg-info
