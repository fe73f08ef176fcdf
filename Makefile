# Everything a newcomer needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: help setup prometheus proto proto-check test test-unit test-provider lint demo bench loadtest clean

help:
	@echo "make demo         the release rehearsal (~2 min): canary passes, rollback, flip, verdict, report"
	@echo "make test         lint, generated-code check, unit + integration + conformance tests"
	@echo "make bench        evaluator vs openfeature-flagd-core, RPC vs bare grpcio echo, propagation"
	@echo "make proto        regenerate ripcord_pb/ from protos/"
	@echo "make lint         ruff + mypy"
	@echo "make loadtest     Locust load test with the kill-switch drill (python -m loadtest --help)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Prometheus comes from Debian (the canary gates run against a real one). Installed on demand.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing prometheus from Debian (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } || \
	  { echo "could not install prometheus: run 'apt-get install -y prometheus' as root"; exit 1; }; }
	@prometheus --version 2>&1 | head -1

# Generated code lives in ripcord_pb/ (not flagd/): the proto package is `flagd.*`, and a
# naive build would create a Python package `flagd` that shadows the daemon's own.
# `-Iripcord_pb=protos` maps the sources under the virtual root `ripcord_pb/`, so the
# modules import as `ripcord_pb.flagd.evaluation.v1.evaluation_pb2` while the wire names
# (`flagd.evaluation.v1.Service`) stay exactly upstream's.
proto: $(STAMP)
	rm -rf ripcord_pb
	$(BIN)/python -m grpc_tools.protoc -Iripcord_pb=protos \
		--python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	find ripcord_pb -type d -exec sh -c 'touch "$$0/__init__.py"' {} \;

proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r protos Makefile pyproject.toml $$tmp/ && \
	  $(BIN)/python -m grpc_tools.protoc -Iripcord_pb=protos --python_out=$$tmp \
	    --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	  find $$tmp/ripcord_pb -type d -exec sh -c 'touch "$$0/__init__.py"' {} \; && \
	  diff -r ripcord_pb $$tmp/ripcord_pb -x __pycache__ >/dev/null || \
	  { echo "ripcord_pb/ is out of date with protos/: run 'make proto' and commit"; exit 1; }
	@echo "generated code is up to date"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: $(STAMP) prometheus
	$(BIN)/pytest --ignore=tests/provider

# The official provider ships its own copy of the flagd protos; loading it next to ours
# fails with "duplicate symbol", so its suites run in a pytest process of their own.
test-provider: $(STAMP)
	$(BIN)/pytest tests/provider

test: lint proto-check test-unit test-provider

demo: $(STAMP) prometheus
	$(BIN)/ripcord demo

bench: $(STAMP)
	$(BIN)/python -m bench

# Locust (master + worker) against daemon, FX simulator and two router processes, with the
# kill-switch drill; fails on a drill p99 over --drill-p99-ms or a lost/doubled payment.
loadtest: $(STAMP)
	$(BIN)/python -m loadtest

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache *.egg-info
