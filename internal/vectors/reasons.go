package vectors

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Reason is one entry of testdata/reasons.json.
type Reason struct {
	Reason  string  `json:"reason"`
	Error   *string `json:"error"`
	Status  int     `json:"status"`
	Kind    *string `json:"kind"`
	Fix     *string `json:"fix"`
	Meaning string  `json:"meaning"`
	Action  string  `json:"action"`
}

// ReasonFile is testdata/reasons.json.
type ReasonFile struct {
	Description string            `json:"description"`
	Kinds       map[string]string `json:"kinds"`
	Reasons     []Reason          `json:"reasons"`
}

// Reasons reads testdata/reasons.json.
func Reasons() (*ReasonFile, error) {
	b, err := os.ReadFile(filepath.Join(Dir(), "..", "reasons.json"))
	if err != nil {
		return nil, err
	}
	var f ReasonFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("vectors: reasons.json: %w", err)
	}
	return &f, nil
}

// ReasonsDocPath is the generated docs/reasons.md.
func ReasonsDocPath() string { return filepath.Join(Dir(), "..", "..", "docs", "reasons.md") }

// RenderReasonsDoc renders docs/reasons.md from the catalogue, so the page people read and
// the table SDKs map from cannot disagree.
func RenderReasonsDoc(f *ReasonFile) []byte {
	var b bytes.Buffer
	b.WriteString(`<!-- Generated from testdata/reasons.json by go run ./internal/vectors/cmd/gen-docs: edit that file, not this one. -->
# Reason codes

Every error answer of the token endpoint carries, next to the OAuth ` + "`error`" + ` and
` + "`error_description`" + `, a stable ` + "`reason`" + `: the same code the decision's audit record
carries. Act on ` + "`reason`" + `, never on the description's words, which may change.

` + "```json" + `
{"error": "invalid_request", "error_description": "no active delegation grant lets this client act for this user", "reason": "no_active_grant"}
` + "```" + `

Each reason has a **kind**, which is what the SDKs turn it into, and says **who can fix it**:

| kind | what to do |
| --- | --- |
`)
	for _, k := range []string{"grant_required", "client_error", "unavailable"} {
		fmt.Fprintf(&b, "| `%s` | %s |\n", k, f.Kinds[k])
	}
	b.WriteString(`
The machine-readable list is [` + "`testdata/reasons.json`" + `](../testdata/reasons.json); the SDKs
are tested against it.

`)
	sections := []struct{ title, fix string }{
		{"The user can fix it: ask for a grant", "user"},
		{"An admin can fix it: the client's or audience's configuration", "admin"},
		{"The developer can fix it: the request or the envelope", "developer"},
		{"Nobody needs to: retry later", "retry"},
	}
	for _, s := range sections {
		fmt.Fprintf(&b, "## %s\n\n| reason | status · error | meaning | what to do |\n| --- | --- | --- | --- |\n", s.title)
		for _, r := range f.Reasons {
			if r.Fix == nil || *r.Fix != s.fix {
				continue
			}
			answer := fmt.Sprintf("%d `%s`", r.Status, deref(r.Error))
			if r.Error == nil {
				answer = fmt.Sprint(r.Status) // a page or problem+json, not an OAuth error
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", r.Reason, answer, cell(r.Meaning), cell(r.Action))
		}
		b.WriteString("\n")
	}
	b.WriteString("## Audit-only reasons\n\nThese appear in audit records, never in an error answer.\n\n| reason | meaning |\n| --- | --- |\n")
	for _, r := range f.Reasons {
		if r.Kind == nil {
			fmt.Fprintf(&b, "| `%s` | %s |\n", r.Reason, cell(r.Meaning))
		}
	}
	return b.Bytes()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
