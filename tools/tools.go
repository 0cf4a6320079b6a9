//go:build tools

// Package tools pins the code generators Mandate uses, in a go.mod of their own so their
// dependencies stay out of the main module. Run them with
// `go run -modfile=../tools/go.mod <package>` from the folder that needs them.
package tools

import _ "github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen"
