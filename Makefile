# `make demo` and `make test` set everything up on a fresh machine (a virtualenv in .venv, and as root
# on Debian/Ubuntu the Arm toolchain and QEMU for the device run) first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.edgekd-installed
APT_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm \
	libcapstone-dev
# A TensorFlow Lite Micro tree beside the checkout (where our machines keep one), unless EDGEKD_TFLM names one.
export EDGEKD_TFLM ?= $(abspath $(firstword $(wildcard ../shared/third_party/tflm/tree)))

.PHONY: demo readme test fast-test lint toolchain clean

demo: $(INSTALLED) toolchain  ## distil, export and benchmark the bundled quickstart recipe into runs/quickstart
	$(BIN)/edgekd run recipes/quickstart.yaml --overwrite

readme: demo  ## regenerate the README's report excerpt from runs/quickstart, and its methods table from RESULTS.md
	$(BIN)/python benchmarks/suite/readme_excerpt.py runs/quickstart
	$(BIN)/python benchmarks/suite/readme_methods.py

test: $(INSTALLED) toolchain  ## the whole suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest

fast-test: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow"

toolchain:  ## the Arm GNU toolchain, QEMU and Capstone (the M7 cycle model) for the device run: apt-get when root
	@if command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null \
	  && [ -f /usr/include/capstone/capstone.h ]; then \
	  echo "toolchain: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	else \
	  echo "toolchain: missing; the device run is skipped until you install $(APT_PACKAGES) (see README)"; \
	fi

lint: $(INSTALLED)
	$(BIN)/ruff check edgekd exporters benchmarks tests

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) runs build *.egg-info
