# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes; `make demo` installs only
# the demo extra, `make test` the test extras as well.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	@touch $@ $(BIN)/.demo-installed

# --no-compile: byte-compiling every installed module (scipy, polars, pyarrow...) doubles the install time;
# Python compiles the few the demo imports when it first runs.
$(BIN)/.demo-installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[demo]'
	@touch $@

demo: $(BIN)/.demo-installed
	$(BIN)/lifecycle demo

# The PostgreSQL tests need a server: scripts/test-postgres.sh installs Debian's postgresql when it is
# missing, starts a throw-away cluster on a free loopback port, runs pytest with
# LIFECYCLE_TEST_POSTGRES_URL set, stops the cluster and exits with pytest's status.
# scripts/test-browser.sh installs Debian's chromium + chromium-driver for the dashboard's browser test.
test: $(BIN)/.installed
	scripts/test-browser.sh run -- scripts/test-postgres.sh run -- $(BIN)/python -m pytest -q -n $(WORKERS)

# Everything but the tests marked `slow` (SIGKILL trials, concurrent syncs, the bench smoke tests); the
# PostgreSQL tests stay in. Tests spend much of their time waiting (rate limits, sandbox clocks, the
# daemon's debounce), so pytest-xdist runs them in WORKERS processes; `make test` (and .ci/run) runs
# everything, slow tests included, the same way (about 9 minutes on 2 cores; one at a time it took over 25).
WORKERS ?= 3
test-fast: $(BIN)/.installed
	scripts/test-browser.sh run -- scripts/test-postgres.sh run -- $(BIN)/python -m pytest -q -m "not slow" -n $(WORKERS)

bench: $(BIN)/.installed
	$(BIN)/python bench/segments.py --customers 100000 --deals 500000

clean:
	rm -rf $(VENV) build *.egg-info
