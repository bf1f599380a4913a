# Two entry points for users: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# flake8-async rules ruff lacks; 910/911 ("an async function always checkpoints") for the library.
ASYNC_RULES := ASYNC102,ASYNC103,ASYNC104,ASYNC120

# The examples `make demo` shows, in order, with a script's arguments after a colon (every script
# is also run by tests/test_examples.py).
DEMOS := token_cancel cancel_me query_timeout interrupt_blocking worker_pool_shutdown:--interrupt-after,1.0 token_tree task_outcomes abort drop_handle \
	abort_cpu_task oneshot_cancel broadcast_cancel watch_cancel race control_worker task_pool \
	merge_streams cancel_safety_sweep state_machine runtime_view async_guard transfer_money graceful_shutdown may_cancel_read raii_connection cleanup_strategies blocking_cleanup http_call_timeout timeout_middleware rpc_long_running tx_guard cancel_bus

.PHONY: venv demo test test-matrix lint typecheck docs docs-check pytest bench clean

# `make demo` has an environment of its own: the library and its `examples` extras only (the
# development tools of `make test` are not needed to run the examples).
DEMO_VENV := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

$(DEMO_STAMP): pyproject.toml
	@echo "===== make demo: installing trio_cancel and what the examples import into $(DEMO_VENV)"
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar on \
	  -e '.[examples]' 2>&1 | grep -v "^WARNING: Location '.*' is ignored" || true
	$(DEMO_VENV)/bin/python -c "import trio_cancel, trio_util, trio_parallel, hypercorn, httpx, connectrpc"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/python examples/_demo.py $(DEMOS)
	@echo
	@echo "===== make demo ran $(words $(DEMOS)) of the examples in examples/ (each script's docstring"
	@echo "says what it shows; examples/README.md lists them all). Read more: docs/ (start at"
	@echo "docs/index.rst, or build it with 'make docs' and open docs/_build/html/index.html)."
	@echo "Run the whole test suite with 'make test' (it installs the development tools in .venv)."

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/flake8-async --enable $(ASYNC_RULES) $$(find trio_cancel tests examples -name '*.py')
	$(BIN)/flake8-async --enable $(ASYNC_RULES),ASYNC910,ASYNC911 $$(find trio_cancel -name '*.py')

# mypy --strict on everything; pyright's type completeness of the public API (100 % or fail),
# run inside the virtual environment as Trio runs it on itself; pyright on the typing tests.
typecheck: $(STAMP)
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" \
	  $(BIN)/pyright --verifytypes trio_cancel --ignoreexternal | tee .pyright.txt | tail -3
	@grep -q "Type completeness score: 100%" .pyright.txt || \
	  { cat .pyright.txt; echo "pyright: the public API is not 100% typed"; exit 1; }
	@# The typing tests (tests/typing/): precise types and lines that must fail, under pyright too.
	PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" \
	  $(BIN)/pyright -p tests/typing/pyrightconfig.json

docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html

# Every built page in headless Chromium at 1,280 and 390 px: nothing may run off the right
# edge (needs Chromium: sudo apt-get install -y chromium).
docs-check: docs
	$(BIN)/python docs/check_layout.py docs/_build/html

# With a throwaway PostgreSQL server on 127.0.0.1 when PostgreSQL is installed (.ci/with-postgres).
pytest: $(STAMP)
	.ci/with-postgres $(BIN)/pytest

test: lint typecheck docs pytest

# The suite on Python 3.11/3.12/3.13 x the oldest and newest claimed Trio, and with the private
# fast paths off (.ci/test-matrix; a missing interpreter is skipped with a message).
test-matrix:
	.ci/test-matrix

# The seed's benchmark (a few minutes; add FULL=1 for 1,000,000 tasks).
bench: $(STAMP)
	$(BIN)/python examples/bench_cancel.py $(if $(FULL),--full) --plot bench_cancel.png

clean:
	rm -rf $(VENV) $(DEMO_VENV) .matrix docs/_build .mypy_cache .ruff_cache .pytest_cache .hypothesis
