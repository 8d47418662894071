# Two commands on a fresh clone (each installs what it needs first, once):
#   make run     -> txsuite run matrices/precision.yaml   (MATRIX=... for another matrix)
#   make test    -> the test suite (slow multi-process tests included), one worker per core
VENV ?= .venv
MATRIX ?= matrices/precision.yaml
STAMP := $(VENV)/.txsuite-installed

.PHONY: install run test bench
install: $(STAMP)
$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

run: $(STAMP)
	$(VENV)/bin/txsuite run $(MATRIX)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto --dist loadfile

bench: $(STAMP)
	$(VENV)/bin/python -m pytest bench -q -s
