# The commands README.md names. Tests that need Postgres read MANDATE_TEST_DATABASE_URL.
.PHONY: run test bench fmt vet generate demo

run:
	go run ./cmd/mandate

test:
	go test -race -count=1 ./...

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
