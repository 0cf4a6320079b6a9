package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// TestE2EExplain: the binary's `mandate explain`, with a read-only admin token, answers what
// the binary's token endpoint then decides on the same exchange, what-if or signed.
func TestE2EExplain(t *testing.T) {
	onBackends(t, func(t *testing.T, s *e2eServer) {
		f := provision(t, s)
		reader := s.admin(t, http.MethodPost, "/clients", map[string]any{
			"client_id": "auditor", "grant_types": []string{"client_credentials"}, "allowed_scopes": []string{"mandate:admin:read"},
		}, http.StatusCreated)
		r := s.post(t, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, basicAuth("auditor", reader["client_secret"].(string)))
		if r.status != http.StatusOK {
			t.Fatalf("reader token: %d %s", r.status, r.raw)
		}
		env := map[string]string{"MANDATE_ADMIN_URL": s.inst.AdminURL, "MANDATE_ADMIN_TOKEN": r.str("access_token"),
			"MANDATE_ISSUER": s.issuer}
		explain := func(args ...string) map[string]any {
			t.Helper()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"explain", "--json"}, args...), func(k string) string { return env[k] }, &stdout, &stderr)
			if err != nil {
				t.Fatalf("mandate explain %v: %v\n%s", args, err, stderr.String())
			}
			var x map[string]any
			if err := json.Unmarshal(stdout.Bytes(), &x); err != nil {
				t.Fatalf("mandate explain --json: %v\n%s", err, stdout.String())
			}
			return x
		}
		// The client's key as the file `mandate envelope keygen` writes.
		k, err := jwk.Import(f.main.key)
		if err != nil {
			t.Fatal(err)
		}
		_ = k.Set(jwk.KeyIDKey, f.main.kid)
		keyJSON, _ := json.Marshal(k)
		keyFile := filepath.Join(t.TempDir(), "mcp-key.json")
		if err := os.WriteFile(keyFile, keyJSON, 0o600); err != nil {
			t.Fatal(err)
		}

		identity := []string{"--client", f.main.ID, "--sub", "user_1", "--tenant", "acme", "--agent", "agent_456",
			"--scopes", "orders:read orders:write orders:admin", "--audience", "orders_api"}
		for _, tc := range []struct {
			name   string
			args   []string
			scope  string
			reason string // "" for granted
		}{
			{name: "what-if, the client may not hold orders:admin", args: []string{"--scope", "orders:admin"}, scope: "orders:admin", reason: "scope_not_allowed"},
			{name: "what-if, every effective scope", args: nil},
			{name: "signed, one scope", args: []string{"--key", keyFile, "--scope", "orders:write"}, scope: "orders:write"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				x := explain(append(identity, tc.args...)...)
				tok := f.main.sign(t, f.main.claims(s, "user_1", randHex(t, 8), "orders:read", "orders:write", "orders:admin"))
				form := teForm(tok, "orders_api")
				if tc.scope != "" {
					form.Set("scope", tc.scope)
				}
				got := s.post(t, "/oauth2/token", form, f.main.auth())
				if tc.reason != "" {
					checkError(t, got, 400, "invalid_scope")
					xe, _ := x["error"].(map[string]any)
					if x["decision"] != "refused" || xe["reason"] != tc.reason || got.str("reason") != tc.reason {
						t.Fatalf("explain %v, endpoint %s", x["error"], got.raw)
					}
					return
				}
				checkGranted(t, got, typeAccess)
				scopes, _ := x["scopes"].([]any)
				var joined []string
				for _, sc := range scopes {
					joined = append(joined, sc.(string))
				}
				if x["decision"] != "granted" || strings.Join(joined, " ") != got.str("scope") || x["expires_in"] != got.body["expires_in"] {
					t.Fatalf("explain %v %v %v; endpoint %s", x["decision"], x["scopes"], x["expires_in"], got.raw)
				}
			})
		}
		recs := s.audit(t, url.Values{"event": {"admin.explain"}})
		if len(recs) != 3 || recs[0]["client_id"] != "auditor" || recs[0]["audience"] != "orders_api" {
			t.Fatalf("admin.explain records: %v", recs)
		}
	})
}
