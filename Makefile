# The commands README.md names. Tests that need Postgres read MANDATE_TEST_DATABASE_URL.
.PHONY: run test test-go test-typescript test-python mandate-bin bench fmt vet generate demo

# The Mandate binary the SDKs' tests run against, built once from this checkout.
MANDATE_BIN ?= $(CURDIR)/.build/mandate
export MANDATE_BIN

run:
	go run ./cmd/mandate

# Everything: the Go module, then each SDK against a Mandate built from this checkout.
test: test-go test-typescript test-python

test-go:
	go test -race -count=1 ./...

mandate-bin:
	go build -o $(MANDATE_BIN) ./cmd/mandate

# The TypeScript SDK (typecheck, lint, unit and integration tests, npm pack install) and its
# example, end to end.
test-typescript: mandate-bin
	cd sdk/typescript && npm ci --no-audit --no-fund && npm test
	cd examples/typescript && npm ci --no-audit --no-fund && npm test

# The Python SDK in its own virtual environment (ruff, mypy --strict, pytest with the
# integration tests, the wheel in a fresh venv) and its example, end to end.
test-python: mandate-bin
	cd sdk/python && python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' && ./scripts/check.sh
	sdk/python/.venv/bin/python -m pytest -q -p no:cacheprovider examples/python/test_demo.py

bench:
	go test -run '^$$' -bench . -benchmem ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	go vet ./...

generate:
	go generate ./api

# The end-to-end demo: IdP, Mandate (SQLite in a temp dir), MCP server, two APIs, audit trail.
demo:
	go run ./examples/demo
