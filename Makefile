# `make run` starts the GUI, `make test` runs the suite; both (re)build .venv when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
ARGS    ?=

.PHONY: run test bench chromium clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rlhf-workbench $(ARGS)

# Browser tests drive Debian's Chromium (Playwright cannot fetch its own browser here).
chromium:
	@command -v /usr/bin/chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'

clean:
	rm -rf $(VENV) workspace
