# framechain: `make run` and `make test` work on a fresh machine with only python3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
MSTAMP := $(VENV)/.installed-mpi

.PHONY: run test soak interop bench bench-peers bench-plot clean browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(TSTAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP) $@

# the bench's mpi suite runs mpiexec (MPICH from PyPI, in the venv)
$(MSTAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[mpi]'
	touch $(STAMP) $@

run: $(STAMP)
	$(VENV)/bin/framechain run examples/xpcs_demo.json

test: $(TSTAMP) browser
	$(PY) -m pytest -q tests

# long runs kept out of `make test`: 10,000 hostile control and data-path messages per daemon (500 in
# make test) and 1,000,000 frames through the soak pipeline (50,000 in make test), RSS printed
soak: $(TSTAMP)
	FRAMECHAIN_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q tests/test_control_fuzz.py tests/test_data_path_fuzz.py \
	  tests/test_rest.py -k 'fuzz or hostile'
	FRAMECHAIN_SOAK_FRAMES=1000000 $(PY) -m pytest -q -s tests/test_soak.py

# against peers built outside this repository: ODIN_DATA_PREFIX names an odin-data build (bin/, lib/)
interop: $(TSTAMP)
	$(PY) -m pytest -q interop

# system packages the tests drive: headless Chromium + chromedriver (web page), tmux (curses TUI),
# iproute2 (the --mpi test's network namespaces)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver -a -x /usr/bin/tmux -a -x /usr/sbin/ip || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver tmux iproute2)

bench: $(MSTAMP)
	$(VENV)/bin/framechain bench $(ARGS)

# the plot in docs/performance.md, from a full run
bench-plot: $(MSTAMP)
	$(VENV)/bin/framechain bench --plot docs/performance.png $(ARGS)

# the peers side by side (scikit-beam comes with the test extras): make bench-peers, or make bench ARGS=--peers
bench-peers: $(TSTAMP) $(MSTAMP)
	$(VENV)/bin/framechain bench --only peers

clean:
	rm -rf $(VENV) build *.egg-info
