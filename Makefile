# Two entry points for users: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# flake8-async rules ruff lacks; 910/911 ("an async function always checkpoints") for the library.
ASYNC_RULES := ASYNC102,ASYNC103,ASYNC104,ASYNC120

# The examples `make demo` shows, in order (every script is also run by tests/test_examples.py).
DEMOS := token_cancel cancel_me query_timeout interrupt_blocking worker_pool_shutdown token_tree task_outcomes abort drop_handle \
	abort_cpu_task oneshot_cancel broadcast_cancel watch_cancel race control_worker task_pool \
	merge_streams cancel_safety_sweep state_machine runtime_view async_guard transfer_money graceful_shutdown may_cancel_read raii_connection cleanup_strategies blocking_cleanup http_call_timeout timeout_middleware rpc_long_running tx_guard cancel_bus

.PHONY: venv demo test test-matrix lint typecheck docs pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@for d in $(DEMOS); do \
	  case $$d in worker_pool_shutdown) args="--interrupt-after 1.0";; *) args="";; esac; \
	  echo; echo "===== examples/$$d.py $$args"; \
	  $(BIN)/python examples/$$d.py $$args || exit 1; \
	done
	@echo
	@echo "===== make demo ran $(words $(DEMOS)) of the examples in examples/ (each script's docstring"
	@echo "says what it shows; examples/README.md lists them all). Read more: docs/ (start at"
	@echo "docs/index.rst, or build it with 'make docs' and open docs/_build/html/index.html)."
	@echo "Run the whole test suite with 'make test'."

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
	rm -rf $(VENV) .matrix docs/_build .mypy_cache .ruff_cache .pytest_cache .hypothesis
