# The two commands a newcomer needs: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What each stamp's install holds: the build requirements (to generate from proto/), then the
# service (.[server]) for make run, or the service and the test tools (.[server,dev]).
BASE := $(VENV)/.base
SERVER := $(VENV)/.installed-server
STAMP := $(VENV)/.installed
GEN := server/comms/v1
PROTOS := $(shell find proto -name '*.proto')

.PHONY: run test bench chaos ha fuzz openapi build generate lint install clean

run: $(SERVER) generate
	COMMS_ENV=$${COMMS_ENV:-development} $(VENV)/bin/comms up

test: build lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The benchmark (README "Benchmark"); ARGS="--db postgres", "--soak", "--duration 30",
# "--peer PATH" (issue 14's FastAPI peer, side by side), "--profile" (py-spy, perf)...
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

# Issue 16's failover drill (README "Several hosts", docs/scaling.md): etcd, two Patroni
# PostgreSQL nodes, three servers on 127.0.0.2-4 and Envoy; kill -9 the primary, then a
# server. Installs patroni and etcd-server from Debian when missing (as root).
# ARGS="--seconds 10", "--instances 2", "--clients 8".
ha: build
	$(PY) -m bench.ha $(ARGS)

install: $(STAMP)

# The [build-system] requires of pyproject.toml: what generating from proto/ needs.
$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c 'import subprocess, sys, tomllib; subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]])'
	touch $@

# Editable installs, built with the requirements above (no isolated build environment).
$(SERVER): $(BASE)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[server]'
	touch $@

$(STAMP): $(BASE)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[server,dev]'
	touch $@

# The dev install and everything generated from proto/.
build: $(STAMP) generate

# The stubs, the descriptor set Envoy loads, the OpenAPI document and Swagger UI's files
# (GET /docs), into server/comms/v1 by
# tools/protogen.py (as a wheel's build does; never committed; openapi/openapi.json is a
# checked copy, see `make openapi`).
generate: $(GEN)/openapi.json

$(GEN)/openapi.json: $(PROTOS) tools/protogen.py server/comms/openapi.py server/comms/httpapi.py server/comms/validation.py $(BASE)
	$(PY) tools/protogen.py server

# Refresh the committed copy of the document; a test fails while the two differ.
openapi: $(GEN)/openapi.json
	cp $< openapi/openapi.json

# Schemathesis against the /openapi.json a fresh stack serves (tests/fuzz); CI runs it.
# ARGS go to `st run`, e.g. ARGS="--seed 7 --max-examples 500".
fuzz: build
	$(PY) -m tests.fuzz $(ARGS)

lint: build
	$(VENV)/bin/buf lint $(GEN)/api.binpb --path comms
	$(VENV)/bin/ruff check server tests bench tools setup.py
	$(VENV)/bin/ruff format --check server tests bench tools setup.py
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(GEN) server/buf build .pytest_cache .mypy_cache .ruff_cache
