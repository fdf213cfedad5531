# SpArSe-style search for microcontroller CNNs. `make search`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

DATASET ?= digits
TRIALS ?= 20
EPOCHS ?= 10
# bench runs without hardware unless BOARD names a real board; search and flash target the real board.
BENCH_BOARD := $(or $(BOARD),qemu-stm32f4)
BOARD ?= stm32f413
OPTIMIZER ?= sparse
SEED ?= 0
# One folder under runs/ whatever the dataset: npz:/path/to/my.npz becomes npz-my.
DATASET_NAME = $(if $(filter npz:%,$(DATASET)),npz-$(basename $(notdir $(DATASET:npz:%=%))),$(DATASET))
OUT ?= runs/$(DATASET_NAME)-$(BOARD)-$(OPTIMIZER)-e$(EPOCHS)-s$(SEED)$(if $(filter-out aot,$(ENGINE)),-$(ENGINE))
DATA_DIR ?=

DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# export, report and bench-compression read RUN, else OUT when given, else the latest search under runs/.
RUN ?= $(if $(filter command line environment,$(origin OUT)),$(OUT))
TRIAL ?=
MODEL ?=
ENGINE ?= aot
PORT ?=
SAMPLES ?=
# make bench/flash write device.json to OUT when OUT is given, else to device-<board>-<engine>/ beside the model.
DEVICE_FLAGS = --board $(DEVICE_BOARD) --engine $(ENGINE) $(if $(MODEL),--model $(MODEL)) \
	$(if $(filter command line environment,$(origin OUT)),--out $(OUT)) $(if $(PORT),--port $(PORT)) \
	$(if $(SAMPLES),--samples $(SAMPLES)) $(DATA_FLAG) \
	$(if $(and $(MODEL),$(filter command line environment,$(origin DATASET))),--dataset $(DATASET))

# ENGINE=tflm finds TensorFlow Lite Micro in TFLM_DIR, else in the cache `make tflm` fills.
export TFLM_DIR

.PHONY: search export report bench flash test bench-search bench-compression bench-aot bench-engines bench-pruning measure-engine-costs tflm clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

search: $(VENV)/.installed
	$(PY) -m pipeline search --dataset $(DATASET) --trials $(TRIALS) --epochs $(EPOCHS) \
		--board $(BOARD) --optimizer $(OPTIMIZER) --seed $(SEED) --engine $(ENGINE) --out $(OUT) $(DATA_FLAG)

export: $(VENV)/.installed
	$(PY) -m pipeline export $(RUN) $(if $(TRIAL),--trial $(TRIAL)) $(DATA_FLAG)

tflm: $(VENV)/.installed
	$(PY) -m pipeline tflm

report: $(VENV)/.installed
	$(PY) -m pipeline report $(RUN)

bench: DEVICE_BOARD = $(BENCH_BOARD)
bench: $(VENV)/.installed
	$(PY) -m pipeline device $(DEVICE_FLAGS)

flash: DEVICE_BOARD = $(BOARD)
flash: $(VENV)/.installed
	$(PY) -m pipeline device $(DEVICE_FLAGS)

test: $(VENV)/.installed
	$(if $(DATA_DIR),SPARSE_DATA_DIR=$(DATA_DIR)) $(PY) -m pytest -q tests

bench-search: $(VENV)/.installed
	$(PY) scripts/bench_search.py $(DATA_FLAG)

bench-compression: $(VENV)/.installed
	$(PY) scripts/bench_compression.py $(RUN) $(DATA_FLAG)

bench-aot: $(VENV)/.installed
	$(PY) scripts/bench_aot.py $(RUN) --board $(BENCH_BOARD)

bench-engines: $(VENV)/.installed
	$(PY) scripts/bench_engines.py $(RUN) --board $(BENCH_BOARD)

bench-pruning: $(VENV)/.installed
	$(PY) scripts/bench_pruning.py $(DATA_FLAG)

# Rewrites tflm_project/boards/engine_costs.tsv (ENGINES=aot measures without a TFLM tree).
ENGINES ?= aot tflm
measure-engine-costs: $(VENV)/.installed
	$(PY) scripts/measure_engine_costs.py --engines $(ENGINES) $(DATA_FLAG)

clean-venv:
	rm -rf $(VENV)
