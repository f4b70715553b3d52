# Tether: the two commands a user needs are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_BIN := node_modules/.bin
BUF := $(NPM_BIN)/buf
NPM_STAMP := node_modules/.installed

.PHONY: setup lock check gen gen-check lint breaking contract-baseline conformance web demo test bench serve clean

# The project's own installs take the exact versions in requirements.lock; pyproject.toml keeps
# the compatible ranges that a user's `pip install tether[...]` resolves.
$(STAMP): pyproject.toml requirements.lock
	@echo "Setting up $(VENV): installing the pinned versions in requirements.lock (first run only, a minute or two)..."
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

## lock: re-pin requirements.lock from a fresh resolve of pyproject.toml's ranges
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^tether'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

# npm tools, pinned by package-lock.json: buf (the contract linter and TypeScript generator),
# protoc-gen-es, the Connect runtime and TypeScript for the examples in examples/typescript, and
# the Codex CLI that the codex runtime's tests drive (its native binary ships inside the
# package; nothing downloads at install time). `npm ci` installs exactly what the lock file
# records and never rewrites it, so a fresh clone stays clean; change versions with
# `npm install`, then commit package.json and package-lock.json together.
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(NPM_STAMP)

setup: $(STAMP)

## gen: regenerate gen/python and gen/ts from proto/ (the generated code is committed)
gen: $(STAMP) $(NPM_STAMP)
	$(BIN)/python tools/gen.py

## gen-check: fail when gen/ differs from what proto/ produces
gen-check: $(STAMP) $(NPM_STAMP)
	$(BIN)/python tools/gen.py --check

## check: the code gate: ruff, ruff format --check, mypy and the import-linter contracts
check: $(STAMP)
	$(BIN)/python tools/check.py

## lint: buf lint on the contract
lint: $(NPM_STAMP)
	$(BUF) lint

## breaking: fail when proto/ breaks the released contract (contract/tether-v1.binpb)
breaking: $(NPM_STAMP)
	$(BUF) breaking --against contract/tether-v1.binpb

## contract-baseline: record proto/ as the released contract (after a reviewed additive change)
contract-baseline: $(NPM_STAMP) breaking
	$(BUF) build --exclude-source-info -o contract/tether-v1.binpb

## conformance: run the worker conformance kit against the Python and TypeScript workers
conformance: $(STAMP) $(NPM_STAMP)
	$(NPM_BIN)/tsc -p examples/typescript
	$(BIN)/tether conformance --worker-cmd "$(BIN)/python -m tether.execution_worker"
	$(BIN)/tether conformance --worker-cmd "node examples/typescript/dist/examples/typescript/worker.js"

## demo: a control plane on SQLite, two workers, live output, a worker SIGKILLed mid-session, a RestoreSession
demo: $(STAMP) web
	$(BIN)/python -m tether.cli.demo

## test: set up, run the code gate, check the contract and generated code, run the whole test suite
test: $(STAMP) $(NPM_STAMP) web
	$(BIN)/python tools/check.py
	$(BUF) lint
	$(BUF) breaking --against contract/tether-v1.binpb
	$(BIN)/python tools/gen.py --check
	$(BIN)/python -m pytest -q -n 2

## bench: print one JSON line per figure
bench: $(STAMP) $(NPM_STAMP)
	$(BIN)/python -m bench

## web: type-check web/ (tsc), bundle the console into control_plane/http/console/ and the browser library into web/client/dist/ (esbuild; no CDN)
web: $(NPM_STAMP)
	$(NPM_BIN)/tsc -p web
	$(NPM_BIN)/esbuild web/console/src/main.ts --bundle --format=esm --target=es2022 --minify --legal-comments=none --log-level=warning --outfile=control_plane/http/console/app.js
	cp web/console/index.html web/console/app.css control_plane/http/console/
	$(NPM_BIN)/esbuild web/client/src/index.ts --bundle --format=esm --target=es2022 '--external:@connectrpc/*' '--external:@bufbuild/*' --log-level=warning --outfile=web/client/dist/tether-client.js

## serve: run a control plane on ./tether.db
serve: $(STAMP)
	$(BIN)/tether serve --dev

clean:
	rm -rf $(VENV) node_modules .pytest_cache
