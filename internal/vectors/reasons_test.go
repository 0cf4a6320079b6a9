package vectors

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReasonsCatalogue: every reason code the server defines is in testdata/reasons.json,
// which the SDKs map from and docs/reasons.md explains. A code added without a catalogue
// entry would reach SDKs as "unknown".
func TestReasonsCatalogue(t *testing.T) {
	known := reasons(t)
	root := filepath.Join(Dir(), "..", "..")
	for _, src := range []struct {
		file, prefix string
	}{
		{"exchange/errors.go", ""},
		{"authz/errors.go", ""},
		{"envelope/errors.go", "envelope_"},
	} {
		for _, code := range reasonConsts(t, filepath.Join(root, src.file)) {
			wire := src.prefix + code
			if wire == "envelope_keys_unavailable" {
				wire = "client_keys_unavailable" // the exchange answers it as the client's key server failing
			}
			if !known[wire] {
				t.Errorf("%s defines reason %q; testdata/reasons.json does not list %q", src.file, code, wire)
			}
		}
	}
}

// reasonConsts returns the string values of the constants named Reason* in file.
func reasonConsts(t *testing.T, file string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Reason") || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, _ := strconv.Unquote(lit.Value)
					out = append(out, v)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s defines no reason constants", file)
	}
	return out
}

// TestReasonsDocIsCurrent: docs/reasons.md is generated from the catalogue; a change to one
// without the other fails here (go run ./internal/vectors/cmd/gen-docs).
func TestReasonsDocIsCurrent(t *testing.T) {
	f, err := Reasons()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Reasons {
		if r.Error != nil && (r.Kind == nil || f.Kinds[*r.Kind] == "" || r.Fix == nil) {
			t.Errorf("%s: an error reason needs a known kind and a fix", r.Reason)
		}
	}
	got, err := os.ReadFile(ReasonsDocPath())
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(RenderReasonsDoc(f)) {
		t.Error("docs/reasons.md is stale: run go run ./internal/vectors/cmd/gen-docs")
	}
}
