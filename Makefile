# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates/refreshes the local virtual environment .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LLMFAB := $(VENV)/bin/llmfab
DEMO_MODEL := tests/fixtures/llama_ts_op14.onnx

.PHONY: demo test test-fast fuzz install clean-venv fixtures trained-fixture bitstream rtl-programs xclbin xclbin-tools

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install when pyproject.toml changes (stamp files).
$(VENV)/.installed-base: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-base
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed-base

demo: $(VENV)/.installed-test
	$(PY) examples/demo.py

# The suite runs on TEST_JOBS processes (pytest-xdist): CI has 2 cores; `make test TEST_JOBS=1` runs it serially.
TEST_JOBS ?= 2
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n $(TEST_JOBS)

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -n $(TEST_JOBS) -m "not sim and not synth"

# The fuzz suite (tests/fuzz) at length: `make test` runs it at 60 examples per strategy (~20 s);
# this runs FUZZ_EXAMPLES per strategy from seed FUZZ_SEED (a failure prints the case to reproduce).
FUZZ_EXAMPLES ?= 2000
FUZZ_SEED ?= 1
fuzz: $(VENV)/.installed-test
	LLMFAB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) LLMFAB_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q -m fuzz tests/fuzz \
		--hypothesis-seed=$(FUZZ_SEED) --hypothesis-show-statistics

# A real ECP5 bitstream for ecp5-85k (yosys + nextpnr-ecp5 + ecppack); prints the time and Fmax.
# The matrix engine alone misses the target's clock today, so the summary says NOT MET and
# --allow-timing-fail keeps that from failing the target (without it `llmfab synth` exits 1).
BITSTREAM_DIR := build/ecp5-85k-rtl
bitstream: $(VENV)/.installed-test
	$(LLMFAB) rtl --target ecp5-85k --part engine -o $(BITSTREAM_DIR)
	$(LLMFAB) synth $(BITSTREAM_DIR) --flow ecp5 --allow-timing-fail

# The accelerator as a Vitis kernel linked for an Alveo card (docs/hardware.md): `llmfab rtl --kernel
# vitis`, Vivado packaging it (kernel/package_xo.tcl) and v++ linking it (kernel/link.cfg). Never
# run here (no Vivado, no v++): without them it stops first, naming the missing tool. PLATFORM is
# the card's Vitis platform (`platforminfo -l`); run the result with `llmfab run BUILD --xclbin ...`.
TARGET ?= u280
PLATFORM ?= xilinx_u280_gen3x16_xdma_1_202211_1
KERNEL_DIR ?= build/$(TARGET)-kernel
xclbin: xclbin-tools $(VENV)/.installed-test
	$(LLMFAB) rtl --target $(TARGET) --kernel vitis -o $(KERNEL_DIR)
	vivado -mode batch -source $(KERNEL_DIR)/kernel/package_xo.tcl -tclargs $(abspath $(KERNEL_DIR))/kernel/llmfab.xo
	v++ -l -t hw --platform $(PLATFORM) --config $(KERNEL_DIR)/kernel/link.cfg -o $(KERNEL_DIR)/llmfab.xclbin \
		$(KERNEL_DIR)/kernel/llmfab.xo
	@echo "wrote $(KERNEL_DIR)/llmfab.xclbin: llmfab run BUILD --xclbin $(KERNEL_DIR)/llmfab.xclbin --tokens ..."

xclbin-tools:
	@missing=""; for tool in vivado v++; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "make xclbin: not on PATH:$$missing; install Vitis (Vivado and v++) and source its settings64.sh (docs/hardware.md)" >&2; \
		exit 1; \
	fi

# Whole compiled programs of the tiny LLaMA (int8, int4-g128, w4-2of4) on the block-RAM
# accelerator in Verilator, bit-exact with the functional simulator; cycles against the models.
# ~2 minutes of Verilator build per policy; CI runs the int8 one (tests/hw/system).
rtl-programs: $(VENV)/.installed-test
	$(PY) benchmarks/bench_rtl_programs.py

# Regenerate tests/fixtures (needs the export extra: torch 2.13.0 CPU, transformers 5).
fixtures: $(VENV)/bin/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[export,test]'
	$(PY) examples/export_tiny.py --out tests/fixtures

# Regenerate the trained fixture (tests/fixtures/trained_llama*: a tiny LLaMA trained on the Python
# stdlib's sources, byte tokens, ~4 minutes on 2 threads; the same export extra as `fixtures`).
trained-fixture: $(VENV)/bin/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[export,test]'
	$(PY) examples/train_tiny.py --out tests/fixtures

clean-venv:
	rm -rf $(VENV)
