# Developer / CI entry points. `make setup` is cheap to re-run: it only reinstalls when requirements.txt,
# pyproject.toml or scripts/setup_triton.sh change (stamp file .venv/.setup-done).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
ARGS ?=

.PHONY: setup serve test bench release-check clean distclean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml scripts/setup_triton.sh | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps
	bash scripts/setup_triton.sh $(PY)
	touch $@

# tritonserver on model_repository; MODEL_REPOSITORY, HTTP_PORT, GRPC_PORT, METRICS_PORT and ARGS override.
serve: $(STAMP)
	bash scripts/serve.sh $(ARGS)

# GPU tests skip themselves without CUDA; integration tests start real tritonservers.
# pytest's exit 5 ("no tests collected") is reported but not treated as a failure.
test: $(STAMP)
	@rc=0; $(PY) -m pytest tests -q -rs $(ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m gptserve.bench $(ARGS)

release-check: $(STAMP)
	bash scripts/release_check.sh $(ARGS)

clean:
	rm -rf $(VENV)/triton $(STAMP) .pytest_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
