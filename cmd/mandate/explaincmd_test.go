package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// explain runs `mandate explain` against the fixture as the bootstrap admin.
func (f *adminFixture) explain(t *testing.T, args ...string) (string, error) {
	t.Helper()
	env := map[string]string{
		"MANDATE_ADMIN_URL":           f.api.URL,
		"MANDATE_ISSUER":              f.issuer.URL,
		"MANDATE_ADMIN_CLIENT_SECRET": f.secret,
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), append([]string{"explain"}, args...), func(k string) string { return env[k] }, &stdout, &stderr)
	return stdout.String(), err
}

// lineOf returns the first line of out whose first field is name.
func lineOf(t *testing.T, out, name string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return line
		}
	}
	t.Fatalf("no line %s in:\n%s", name, out)
	return ""
}

// "Would alice's agent get orders:write on orders_api?" in one line, what-if or signed, with
// the flags that mint alice's envelope.
func TestExplainCLI(t *testing.T) {
	f := newAdminFixture(t)
	dir := t.TempDir()
	keyFile, jwksFile := filepath.Join(dir, "mcp-key.json"), filepath.Join(dir, "mcp-jwks.json")
	var jwks bytes.Buffer
	if err := runEnvelope(context.Background(), []string{"keygen", "--out", keyFile}, func(string) string { return "" }, &jwks); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jwksFile, jwks.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f.ok(t, "audiences", "create", "--id", "orders_api", "--scope", "orders:read", "--scope", "orders:write")
	f.ok(t, "clients", "create", "--id", "webapp", "--jwks-file", jwksFile, "--tenant", "acme")
	grant := field(t, f.ok(t, "grants", "create", "--tenant", "acme", "--subject", "alice", "--client", "webapp",
		"--audience", "orders_api", "--scope", "orders:read", "--expires-in", "720h"), "id")

	alice := []string{"--client", "webapp", "--sub", "alice", "--tenant", "acme", "--agent", "support-agent",
		"--scopes", "orders:read orders:write", "--audience", "orders_api"}

	out, err := f.explain(t, append(alice, "--scope", "orders:write")...)
	if err != nil {
		t.Fatal(err)
	}
	if first := strings.SplitN(out, "\n", 2)[0]; !strings.HasPrefix(first, "REFUSED  invalid_scope (scope_not_allowed): a requested scope is not allowed") ||
		!strings.Contains(first, "what-if") {
		t.Errorf("decision line %q", first)
	}
	if l := lineOf(t, out, "scopes"); !strings.Contains(l, "refused") {
		t.Errorf("scopes step: %q", l)
	}
	if l := lineOf(t, out, "envelope_signature"); !strings.Contains(l, "skipped") {
		t.Errorf("signature step: %q", l)
	}
	if l := lineOf(t, out, grant); !strings.Contains(l, "requested [orders:write] not in the effective scopes [orders:read]") {
		t.Errorf("grant line: %q", l)
	}
	for _, header := range []string{"STEP", "GRANT"} {
		lineOf(t, out, header)
	}

	// Signed with the client's key: the signature is checked, and the effective scopes granted.
	out, err = f.explain(t, append(alice, "--key", keyFile)...)
	if err != nil {
		t.Fatal(err)
	}
	if first := strings.SplitN(out, "\n", 2)[0]; !strings.HasPrefix(first, `GRANTED  a token for orders_api with scope "orders:read" for 300 s under grant `+grant) {
		t.Errorf("decision line %q", first)
	}
	if l := lineOf(t, out, "envelope_signature"); !strings.Contains(l, "passed") {
		t.Errorf("signature step: %q", l)
	}
	if l := lineOf(t, out, grant); !strings.Contains(l, "CHOSEN") {
		t.Errorf("grant line: %q", l)
	}
	if l := lineOf(t, out, "token"); !strings.Contains(l, `"sub":"alice"`) || strings.Contains(l, `"jti"`) {
		t.Errorf("claims line: %q", l)
	}

	// --json is the API's answer; --at moves the clock (and the envelope) past the grant.
	out, err = f.explain(t, append(alice, "--json", "--at", "2099-01-01T00:00:00Z")...)
	if err != nil {
		t.Fatal(err)
	}
	var x struct {
		Decision string `json:"decision"`
		Error    struct{ Reason string }
		At       string `json:"at"`
	}
	if err := json.Unmarshal([]byte(out), &x); err != nil || x.Decision != "refused" || x.Error.Reason != "no_active_grant" || x.At != "2099-01-01T00:00:00Z" {
		t.Errorf("--json --at: %v %+v\n%s", err, x, out)
	}

	// Each call is audited as admin.explain.
	n := 0
	for _, r := range f.auditOf(t) {
		if r.Event == "admin.explain" {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d admin.explain records, want 3", n)
	}

	for _, bad := range [][]string{
		{"--client", "webapp", "--tenant", "acme", "--agent", "a", "--audience", "orders_api"}, // no --sub
		{"--client", "webapp", "--sub", "alice", "--tenant", "acme", "--agent", "a", "--at", "soon"},
		{"--client", "webapp", "--sub", "alice", "--tenant", "acme", "--agent", "a", "--key", filepath.Join(dir, "nope")},
	} {
		if _, err := f.explain(t, bad...); err == nil {
			t.Errorf("explain %v: no error", bad)
		} else if _, ok := err.(usageError); !ok {
			t.Errorf("explain %v: %v, want a usage error", bad, err)
		}
	}
}
