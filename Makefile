VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP) $(DEV_STAMP)

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m detops demo --out demo

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only

lint: $(DEV_STAMP)
	$(PY) -m ruff check detops reference tests benchmarks
	$(PY) -m ruff format --check detops reference tests benchmarks
	$(PY) -m mypy detops reference

clean:
	rm -rf $(VENV) demo .hypothesis .benchmarks
