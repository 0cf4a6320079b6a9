package server

import (
	"net/http"
	"testing"
)

// Explain through the assembled server: it answers with the store up, and like the rest of
// the admin API it answers 503 with the store down, never a decision made without the store.
func TestExplainWithTheStoreDownIs503(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		r := startTogether(t, b.open(t, 1, DefaultDatabaseTimeout), Options{})[0]
		admin := r.adminToken(t)
		// mandate-admin has client_credentials only: refused at the grant type step.
		ask := map[string]any{"client_id": "mandate-admin", "audience": "orders_api", "claims": map[string]any{"iss": "mandate-admin"}}
		got := r.call(t, http.MethodPost, "/explain", admin, ask)
		if errBody, _ := got.body["error"].(map[string]any); got.status != http.StatusOK || got.body["decision"] != "refused" ||
			errBody["reason"] != "grant_type_not_allowed" {
			t.Fatalf("explain with the store up: %d %s", got.status, got.raw)
		}
		if err := r.store.Close(); err != nil {
			t.Fatal(err)
		}
		got = r.call(t, http.MethodPost, "/explain", admin, ask)
		if got.status != http.StatusServiceUnavailable || got.header.Get("Content-Type") != "application/problem+json" ||
			got.header.Get("Retry-After") == "" {
			t.Fatalf("explain with the store down: %d %q %s", got.status, got.header.Get("Content-Type"), got.raw)
		}
	})
}
