# Three commands a newcomer needs: `make demo`, `make train` and `make test`.
# Each creates the virtual environment on first use (.venv) and reuses it after.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo train test notebooks lint format clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m eval.demo

train: $(STAMP)
	$(PY) -m unclip_repro train-all --preset shapes --runs runs

# one pytest worker per core, one thread each (2 cores: 17.5 min against 24.7 for one 2-thread
# process with the old notebooks; 5.2 min since they run at their quick size, idle machine)
JOBS ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)
# the notebooks run at a quick size here (UNCLIP_NOTEBOOK_QUICK, read by each one's parameter
# cell); their committed outputs come from `make notebooks`, at the teaching size
test: $(STAMP)
	OMP_NUM_THREADS=1 UNCLIP_NOTEBOOK_QUICK=1 $(PY) -m pytest tests --nbmake notebooks -q -n $(JOBS)

# execute every notebook in place at its teaching size (seeded), timing each: the executed
# notebooks are what the repository holds. Re-run after changing a notebook or a checkpoint.
notebooks: $(STAMP)
	MPLBACKEND=module://matplotlib_inline.backend_inline $(PY) notebooks/execute.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-venv:
	rm -rf $(VENV)
