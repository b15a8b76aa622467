# The two commands a newcomer needs: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN := server/comms/v1
PROTOS := $(shell find proto -name '*.proto')

.PHONY: run test bench chaos fuzz openapi build lint install clean

run: build
	COMMS_ENV=$${COMMS_ENV:-development} $(VENV)/bin/comms up

test: build lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Issue 5's benchmark (README "Benchmark"); ARGS="--db postgres", "--soak", "--duration 30"...
# It drives HTTP with wrk, installed from Debian here when missing (as root).
bench: build
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing wrk (apt-get)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
		else echo "make bench needs wrk: apt-get install wrk (as root)" >&2; exit 1; fi; }
	$(PY) -m bench.run $(ARGS)

# Issue 7's faults, longer than in make test (README "Failure behaviour"): acknowledged vs
# stored per fault; exits 1 if anything acknowledged was lost. ARGS="--seconds 30", "--db sqlite"
chaos: build
	$(PY) -m bench.chaos $(ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Python code, the descriptor set Envoy loads and the OpenAPI document, all generated from
# proto/ (never committed; openapi/openapi.json is a checked copy, see `make openapi`).
build: $(GEN)/api.binpb $(GEN)/openapi.json

# buf/validate/validate.proto comes from the protovalidate wheel (comms.bufvalidate); its
# Python module is generated beside ours (server/buf/, never committed).
$(GEN)/api.binpb: $(PROTOS) $(STAMP)
	mkdir -p $(GEN) build
	$(PY) -m comms.bufvalidate build/validate.binpb
	$(PY) -m grpc_tools.protoc --descriptor_set_in=build/validate.binpb --python_out=server --pyi_out=server buf/validate/validate.proto
	$(PY) -m grpc_tools.protoc --descriptor_set_in=build/validate.binpb -Iproto -I"$$($(PY) -c 'import google.api, pathlib; print(pathlib.Path(google.api.__path__[0]).parents[1])')" \
		--python_out=server --pyi_out=server --grpc_python_out=server \
		--include_imports --include_source_info --descriptor_set_out=$@ $(PROTOS)

$(GEN)/openapi.json: $(GEN)/api.binpb server/comms/openapi.py server/comms/validation.py
	$(PY) -m comms.openapi $< -o $@

# Refresh the committed copy of the document; a test fails while the two differ.
openapi: $(GEN)/openapi.json
	cp $< openapi/openapi.json

# Schemathesis against the /openapi.json a fresh stack serves (tests/fuzz); CI runs it.
# ARGS go to `st run`, e.g. ARGS="--seed 7 --max-examples 500".
fuzz: build
	$(PY) -m tests.fuzz $(ARGS)

lint: build
	$(VENV)/bin/buf lint $(GEN)/api.binpb --path comms
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/ruff format --check server tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(GEN) server/buf build .pytest_cache .mypy_cache .ruff_cache
