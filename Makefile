# `make run`: set up .venv and run the DVC pipeline; `make test`: set up and run every test;
# `make test-fast`: the tests without the end-to-end ones (no DVC, no browser), for the edit loop.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch installed when .venv has none. A torch already in .venv is kept (and pinned, so no
# other install replaces it): install the build you want there first.
TORCH ?= torch==2.13.0

.PHONY: setup run test test-fast browser postgres
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -W ignore -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/python -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -c $(VENV)/torch-constraint.txt -e ".[all,test]"
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

# The browser test drives Debian's chromium (no browser download); install it when missing.
browser:
	@command -v chromium >/dev/null || test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "the browser test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# Two workers; a module's tests that share one trained repository, and the tests that time or
# run several processes at once, each stay on one worker (their xdist_group).
PYTEST := PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadgroup

# The team-server tests start Debian's PostgreSQL in a temporary directory; install it when missing.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else echo "the team-server tests need Debian's postgresql: sudo apt-get install postgresql" >&2; exit 1; fi; }

test: setup browser postgres
	$(PYTEST)

test-fast: setup
	$(PYTEST) --ignore=tests/e2e
