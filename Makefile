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
# a latency budget in ms at the board's clock (the AOT engine's predicted time per inference); none by default
MAX_LATENCY_MS ?=
# the accuracy floor (a fraction; empty: the dataset's default, 60 % of the way from chance to 100 %; 0: none)
MIN_ACCURACY ?=
# EARLY_STOPPING=1 stops hopeless trials at epochs E/3 and E/9; MORPHISM_TRIALS=N makes the last N trials
# morphisms of Pareto models, fine-tuned MORPHISM_EPOCHS epochs (empty: a third of EPOCHS)
EARLY_STOPPING ?=
ifneq ($(filter-out 0 1,$(EARLY_STOPPING)),)
  $(error EARLY_STOPPING=$(EARLY_STOPPING) is not allowed: give 1 (stop hopeless trials early) or 0 (train every trial in full))
endif
MORPHISM_TRIALS ?= 0
MORPHISM_EPOCHS ?=
STRATEGY_FLAGS = $(if $(MAX_LATENCY_MS),--max-latency-ms $(MAX_LATENCY_MS)) \
	$(if $(MIN_ACCURACY),--min-accuracy $(MIN_ACCURACY)) $(if $(filter 1,$(EARLY_STOPPING)),--early-stopping) \
	$(if $(filter-out 0,$(MORPHISM_TRIALS)),--morphism-trials $(MORPHISM_TRIALS)) \
	$(if $(MORPHISM_EPOCHS),--morphism-epochs $(MORPHISM_EPOCHS))

DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# export, report and bench-compression read RUN, else OUT when given, else the latest search under runs/.
RUN ?= $(if $(filter command line environment,$(origin OUT)),$(OUT))
TRIAL ?=
MODEL ?=
ENGINE ?= aot
PORT ?=
SAMPLES ?=
# make bench/flash write device.json to OUT when OUT is given, else to device-<board>-<engine>/ beside the model.
# RUN given on the command line (and no MODEL): every exported model of that run, one after another.
RUN_GIVEN = $(and $(filter command line environment,$(origin RUN)),$(if $(MODEL),,1))
DEVICE_FLAGS = --board $(DEVICE_BOARD) --engine $(ENGINE) $(if $(MODEL),--model $(MODEL)) \
	$(if $(RUN_GIVEN),--run $(RUN)) \
	$(if $(and $(filter command line environment,$(origin OUT)),$(if $(RUN_GIVEN),,1)),--out $(OUT)) \
	$(if $(PORT),--port $(PORT)) \
	$(if $(SAMPLES),--samples $(SAMPLES)) $(DATA_FLAG) \
	$(if $(and $(MODEL),$(filter command line environment,$(origin DATASET))),--dataset $(DATASET))

# ENGINE=tflm finds TensorFlow Lite Micro in TFLM_DIR, else in the cache `make tflm` fills.
export TFLM_DIR

.PHONY: search search-distributed worker export report bench flash test bench-search reproduce bench-distributed fit-latency-model bench-compression bench-aot bench-engines bench-user-model bench-pruning \
	bench-reference bench-check bench-baseline measure-engine-costs tflm clean-venv debian-packages

# The venv's stamp names the hash of requirements.txt, so a cached .venv (CI) is reused exactly
# when the pins are the same, whatever the files' dates.
REQUIREMENTS_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
INSTALLED := $(VENV)/.installed-$(REQUIREMENTS_HASH)
$(INSTALLED):
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# What the firmware, its tests and the report's test need from Debian (root; .ci/run calls it).
DEBIAN_PACKAGES := python3-venv make gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib \
	qemu-system-arm chromium
debian-packages:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBIAN_PACKAGES)

search: $(INSTALLED)
	$(PY) -m pipeline search --dataset $(DATASET) --trials $(TRIALS) --epochs $(EPOCHS) \
		--board $(BOARD) --optimizer $(OPTIMIZER) --seed $(SEED) --engine $(ENGINE) --out $(OUT) $(DATA_FLAG) \
		$(STRATEGY_FLAGS)

# The same search served to WORKERS local worker processes (0: to workers started elsewhere, which then
# need ORACLE_HOST=0.0.0.0 and a fixed ORACLE_PORT). `make worker` runs one worker on this machine; it finds
# the chief through KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT.
WORKERS ?= 2
ORACLE_HOST ?= 127.0.0.1
ORACLE_PORT ?= 0
search-distributed: $(INSTALLED)
	$(PY) -m pipeline search-distributed --dataset $(DATASET) --trials $(TRIALS) --epochs $(EPOCHS) \
		--board $(BOARD) --optimizer $(OPTIMIZER) --seed $(SEED) --engine $(ENGINE) --out $(OUT) $(DATA_FLAG) \
		$(STRATEGY_FLAGS) --workers $(WORKERS) --host $(ORACLE_HOST) --port $(ORACLE_PORT)

worker: $(INSTALLED)
	$(PY) -m pipeline worker $(DATA_FLAG)

export: $(INSTALLED)
	$(PY) -m pipeline export $(RUN) $(if $(TRIAL),--trial $(TRIAL)) $(DATA_FLAG)

tflm: $(INSTALLED)
	$(PY) -m pipeline tflm

report: $(INSTALLED)
	$(PY) -m pipeline report $(RUN)

bench: DEVICE_BOARD = $(BENCH_BOARD)
bench: $(INSTALLED)
	$(PY) -m pipeline device $(DEVICE_FLAGS)

flash: DEVICE_BOARD = $(BOARD)
flash: $(INSTALLED)
	$(PY) -m pipeline device $(DEVICE_FLAGS)

test: $(INSTALLED)
	$(if $(DATA_DIR),SPARSE_DATA_DIR=$(DATA_DIR)) $(PY) -m pytest -q tests

bench-search: $(INSTALLED)
	$(PY) scripts/bench_search.py $(DATA_FLAG)

# The whole method at a budget that fits 2 hours on 2 cores, exported, beside the SpArSe paper's points.
reproduce: $(INSTALLED)
	$(PY) scripts/reproduce.py --dataset $(DATASET) --seed $(SEED) $(DATA_FLAG)

bench-distributed: $(INSTALLED)
	$(PY) scripts/bench_distributed.py $(DATA_FLAG)

# Recalibrates tflm_project/boards/latency_model.tsv on QEMU from FIT_RUNS' trials, checked on RUN's exported models.
FIT_RUNS ?=
fit-latency-model: $(INSTALLED)
	$(if $(FIT_RUNS),,$(error FIT_RUNS is empty: give the search runs to calibrate on, e.g. FIT_RUNS="runs/a runs/b" (see the README's latency section)))
	$(PY) scripts/fit_latency_model.py --fit $(FIT_RUNS) $(if $(RUN),--check $(RUN)) $(DATA_FLAG)

bench-compression: $(INSTALLED)
	$(PY) scripts/bench_compression.py $(RUN) $(DATA_FLAG)

bench-aot: $(INSTALLED)
	$(PY) scripts/bench_aot.py $(RUN) --board $(BENCH_BOARD)

# ENGINES="aot" where no TFLM tree is at hand; PORT=/dev/ttyACM0 runs a real BOARD instead of its QEMU twin.
bench-engines: $(INSTALLED)
	$(PY) scripts/bench_engines.py $(RUN) --board $(BENCH_BOARD) --engines $(ENGINES) $(if $(PORT),--port $(PORT))

# A user's own Keras CNN with Dense layers, converted as TFLite's guide says, dense and pruned, on both QEMU boards.
bench-user-model: $(INSTALLED)
	$(PY) scripts/bench_user_model.py --engines $(ENGINES) $(DATA_FLAG)

# The reference models committed in bench/models on BOARD (its QEMU twin unless PORT is given), into
# runs/bench-reference: the figures bench-check compares, the same whichever CPU trained anything.
bench-reference: $(INSTALLED)
	$(PY) scripts/bench_reference.py --board $(BENCH_BOARD) --engines $(ENGINES) $(if $(PORT),--port $(PORT)) \
		$(if $(SAMPLES),--samples $(SAMPLES)) $(DATA_FLAG)

# The reference models' device.json files (or RUN's) against bench/baseline.json (BOARDS: only those
# boards' entries).
BOARDS ?=
# CHECK_ENGINES=aot checks only the AOT entries (no TFLM tree at hand).
CHECK_ENGINES ?=
bench-check: $(INSTALLED)
	$(PY) scripts/bench_check.py $(RUN) $(if $(BOARDS),--boards $(BOARDS)) \
		$(if $(CHECK_ENGINES),--engines $(CHECK_ENGINES))

bench-baseline: $(INSTALLED)
	$(PY) scripts/bench_check.py $(RUN) --write $(if $(BOARDS),--boards $(BOARDS))

bench-pruning: $(INSTALLED)
	$(PY) scripts/bench_pruning.py $(DATA_FLAG)

# Rewrites tflm_project/boards/engine_costs.tsv (ENGINES=aot measures without a TFLM tree).
ENGINES ?= aot tflm
measure-engine-costs: $(INSTALLED)
	$(PY) scripts/measure_engine_costs.py --engines $(ENGINES) $(DATA_FLAG)

clean-venv:
	rm -rf $(VENV)
