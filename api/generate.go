package api

// The server interface and models are generated from openapi.yaml; the result, api.gen.go,
// is committed. Regenerate from this folder with `go generate` (CI checks it changes nothing).
//go:generate go run -modfile=../tools/go.mod github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen -config oapi-codegen.yaml openapi.yaml
