# Developer / CI entry points; `make help` lists them. `make setup` is cheap to re-run: it only reinstalls when
# requirements.txt, pyproject.toml or scripts/setup_triton.sh change (stamp file .venv/.setup-done).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
ARGS ?=
MODEL ?= gpt_large_stream

.PHONY: help setup serve test bench trace release-check rollback-drill check-tools aiperf clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with everything the server, the tools and the tests need

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml scripts/setup_triton.sh | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps
	bash scripts/setup_triton.sh $(PY)
	touch $@

serve: $(STAMP) ## start tritonserver on model_repository (HOST, HTTP_PORT, GRPC_PORT, METRICS_PORT, ARGS)
	@bash scripts/serve.sh $(ARGS)

test: $(STAMP) ## the whole test suite (GPU tests skip themselves without CUDA); ARGS go to pytest
	@rc=0; $(PY) -m pytest tests -q -rs $(ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

bench: $(STAMP) ## engine benchmark on a GPU (python -m bench.engine; ARGS e.g. --variants bf16-sdpa)
	$(PY) -m bench.engine $(ARGS)

trace: $(STAMP) ## profiler trace of decode steps of MODEL's configuration, under artifacts/trace (GPU)
	$(PY) -m bench.profile_decode --config model_repository/$(MODEL)/config.pbtxt --trace --output artifacts/trace $(ARGS)

release-check: $(STAMP) ## warm-up checks + SLO load test against a running server
	bash scripts/release_check.sh $(ARGS)

rollback-drill: $(STAMP) ## serve a candidate version beside the current one, check it, roll back on failure
	bash scripts/rollback_drill.sh $(ARGS)

check-tools: ## install the deployment checkers (kubectl, hadolint, checkov, promtool, systemd-analyze)
	bash scripts/install_check_tools.sh

aiperf: .venv-aiperf/bin/aiperf ## install NVIDIA aiperf in its own venv (its pins clash with .venv's): docs/tools.md

.venv-aiperf/bin/aiperf:
	$(PYTHON) -m venv .venv-aiperf
	.venv-aiperf/bin/pip install --quiet aiperf==0.13.0

clean: ## remove build leftovers (keeps .venv's packages)
	rm -rf $(VENV)/triton $(STAMP) .pytest_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean ## remove .venv and .venv-aiperf too
	rm -rf $(VENV) .venv-aiperf
