package authz_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/storage"
)

// A refused revocation is audited like every other denial (SPEC §8), without the token.
func TestRevokeRefusalsAudited(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	ctx := context.Background()
	tok := e.wantTokenString(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), ordersAPI)))

	wantError(t, e.post("/oauth2/revoke", otherID, url.Values{"token": {tok}}), 400, "unauthorized_client")
	wantError(t, e.do("/oauth2/revoke", url.Values{"token": {tok}}, func(r *http.Request) { r.SetBasicAuth(clientID, "mcs_wrong") }),
		401, "invalid_client")
	wantError(t, e.post("/oauth2/revoke", clientID, url.Values{}), 400, "invalid_request")

	if err := e.handler.RecordAuthFailures(ctx, true); err != nil {
		t.Fatal(err)
	}
	items, _, err := e.store.ListAudit(ctx, storage.AuditFilter{Event: authz.EventRevoke, Outcome: storage.OutcomeDenied})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, it := range items {
		reasons = append(reasons, it.ClientID+":"+it.Reason)
		if b, _ := json.Marshal(it); strings.Contains(string(b), tok) {
			t.Errorf("audit record holds the token: %s", b)
		}
		if it.Reason == authz.ReasonNotTokenOwner && (it.TokenJTI == "" || it.Audience != ordersAPI) {
			t.Errorf("refused revocation not attributed to the token: %+v", it)
		}
	}
	slices.Sort(reasons)
	// The failed authentication is nobody's: in the address's aggregated record, not here.
	want := []string{clientID + ":" + authz.ReasonMalformedRequest, otherID + ":" + authz.ReasonNotTokenOwner}
	slices.Sort(want)
	if !slices.Equal(reasons, want) {
		t.Errorf("denied revoke audit = %v, want %v", reasons, want)
	}
}

// SPEC §10: a token over 8 KiB is invalid_request at introspection and revocation too.
func TestOversizedTokenParameter(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	big := strings.Repeat("a", 8<<10+1)
	for _, p := range []string{"/oauth2/introspect", "/oauth2/revoke"} {
		wantError(t, e.post(p, clientID, url.Values{"token": {big}}), 400, "invalid_request")
	}
}

// An admin token carries only the scopes its client still holds: taking mandate:admin away
// takes it away from tokens already issued, as disabling the client does.
func TestBearerScopesFollowTheClient(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	ctx := context.Background()
	e.addClient(&storage.Client{ID: "mandate-admin", GrantTypes: []string{"client_credentials"},
		AllowedScopes: []string{"mandate:admin", "mandate:admin:read"}})
	tok := e.wantTokenString(t, e.post("/oauth2/token", "mandate-admin", url.Values{"grant_type": {"client_credentials"}}))

	if _, err := e.store.UpdateClient(ctx, "mandate-admin", func(c *storage.Client) error {
		c.AllowedScopes = []string{"mandate:admin:read"}
		c.UpdatedAt = e.clock.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.svc.InvalidateClient("mandate-admin")
	_, scopes, err := e.handler.AuthenticateBearer(ctx, tok)
	if err != nil || !slices.Equal(scopes, []string{"mandate:admin:read"}) {
		t.Errorf("AuthenticateBearer after the client lost mandate:admin = %v, %v; want [mandate:admin:read]", scopes, err)
	}
}
