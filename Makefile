# The commands README.md names. Tests that need Postgres read MANDATE_TEST_DATABASE_URL.
.PHONY: run test test-go test-typescript bench fmt vet generate demo

run:
	go run ./cmd/mandate

# Everything: the Go module, then each SDK against a Mandate built from this checkout.
test: test-go test-typescript

test-go:
	go test -race -count=1 ./...

# The TypeScript SDK (typecheck, lint, unit and integration tests, npm pack install) and its
# example, end to end. The example reuses the Mandate binary the SDK's tests built.
test-typescript:
	cd sdk/typescript && npm ci --no-audit --no-fund && npm test
	cd examples/typescript && npm ci --no-audit --no-fund && MANDATE_BIN=$(CURDIR)/sdk/typescript/build/mandate npm test

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
