# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test test-fast lint packages kube helm registry node openapi bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

packages:  ## the Debian packages the stack and the tests need (as root; only what is missing)
	bash stack/packages.sh

kube: $(VENV)/.installed  ## build the Kubernetes control plane once (cached outside the repo)
	$(PY) -m stack.kube build

helm: $(VENV)/.installed  ## build helm once, next to the control plane (for the chart's tests)
	$(PY) -m stack.helm build

registry: $(VENV)/.installed  ## build the OCI registry and crane once, next to the control plane
	$(PY) -m stack.registry build

node: $(VENV)/.installed  ## build a real node's binaries once (kubelet, kube-proxy, CoreDNS, NetworkPolicy, Traefik)
	$(PY) -m stack.node_build build

# GitHub's REST and webhook OpenAPI descriptions at the versions package-lock.json pins,
# which tests/contract checks the Git host stand-in's traffic and the fixtures against.
# npm ci empties node_modules first, so the stamp exists only after a complete install;
# no package runs a script (--ignore-scripts): only their JSON files are read.
openapi: node_modules/.installed  ## install GitHub's pinned API descriptions (npm ci, only when package*.json changed)
node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --include=dev --no-audit --no-fund
	touch $@

run: packages kube registry node  ## the whole system on the embedded local stack, following one preview to Ready
	$(PY) -m stack.run

test: kube helm registry node openapi  ## every test, on real servers the fixtures start on loopback
	$(VENV)/bin/pytest -p no:cacheprovider

test-fast: $(VENV)/.installed openapi  ## tests that need no Kubernetes control plane
	$(VENV)/bin/pytest -p no:cacheprovider -m "not kube and not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

clean:
	rm -rf .state
