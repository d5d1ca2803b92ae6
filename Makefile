# Two commands do everything on a fresh machine: `make run` and `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: help bootstrap run test bench lint format clean-data

help:
	@echo "make run     bootstrap, start PostgreSQL, Redis, web, Celery worker and beat with demo data"
	@echo "make test    bootstrap, start a throwaway PostgreSQL and Redis, run ruff and pytest"
	@echo "             (ARGS='-k whoami accounts/tests' passes arguments to pytest)"
	@echo "make bench   run the benchmarks in bench/ against throwaway services"
	@echo "make format  apply ruff's formatter and safe fixes"

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	@$(PY) scripts/devctl.py run

test: bootstrap
	@$(PY) scripts/devctl.py test -- $(ARGS)

# Benchmarks print ratios against baselines measured in the same run (not part of `make test`).
bench: bootstrap
	@$(PY) scripts/devctl.py bench $(or $(BENCH),bench/registry_api.py)

lint: bootstrap
	@$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: bootstrap
	@$(PY) -m ruff check --fix . && $(PY) -m ruff format .

clean-data:
	@echo "This deletes the make-run database in .data/ (stop make run first)."
	@read -p "Type 'yes' to continue: " ok && [ "$$ok" = yes ] && rm -rf .data
