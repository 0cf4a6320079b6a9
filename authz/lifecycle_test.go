package authz_test

import (
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// SPEC §6: a token is inactive at introspection once the client it was issued to is disabled
// or deleted, and once its grant no longer exists. Disabling is for good for the tokens it
// caught: enabling the client again does not bring them back, nor does a new client that
// takes a deleted one's id.
func TestTokensOfDisabledOrDeletedClientsAreInactive(t *testing.T) {
	eachBackend(t, func(t *testing.T, st storage.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		active := func(tok string) bool {
			t.Helper()
			r := e.post("/oauth2/introspect", otherID, url.Values{"token": {tok}})
			if r.status != 200 {
				t.Fatalf("introspect: %d %s", r.status, r.raw)
			}
			return r.body["active"] == true
		}
		issue := func() string {
			t.Helper()
			return e.wantTokenString(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), ordersAPI)))
		}
		setDisabled := func(disabled bool) {
			t.Helper()
			if _, err := st.UpdateClient(ctx, clientID, func(c *storage.Client) error {
				c.Disabled = disabled
				if disabled {
					c.DisabledAt = e.clock.Now()
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			e.svc.InvalidateClient(clientID)
		}

		tok := issue()
		if !active(tok) {
			t.Fatal("a fresh token is not active")
		}
		e.clock.Advance(time.Second)
		setDisabled(true)
		if active(tok) {
			t.Error("a token of a disabled client is active")
		}
		// Nobody revokes it meanwhile: its client cannot authenticate, and no other client
		// may revoke a token that is not its own. Nobody needs to: it is inactive for good.
		wantError(t, e.post("/oauth2/revoke", clientID, url.Values{"token": {tok}}), 401, "invalid_client")
		wantError(t, e.post("/oauth2/revoke", otherID, url.Values{"token": {tok}}), 400, "unauthorized_client")
		setDisabled(false)
		if active(tok) {
			t.Error("a token issued before its client was disabled is active again once it is enabled")
		}
		e.clock.Advance(time.Second)
		if fresh := issue(); !active(fresh) {
			t.Error("a token issued after the client was enabled again is not active")
		}

		tok = issue()
		if err := st.DeleteClient(ctx, clientID); err != nil {
			t.Fatal(err)
		}
		e.svc.InvalidateClient(clientID)
		if active(tok) {
			t.Error("a token of a deleted client is active")
		}
		e.clock.Advance(time.Second)
		e.addClient(&storage.Client{ID: clientID, AllowedTenants: []string{tenant}})
		if active(tok) {
			t.Error("a token of a deleted client is active again once another client takes its id")
		}
	})
}

// A grant that no longer exists (version 3 deleted a client's grants with it) reads as
// gone, not as "not revoked".
func TestTokenWhoseGrantIsGoneIsInactive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := newEnv(t, st)
	tok := e.wantTokenString(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), ordersAPI)))
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`DELETE FROM grants WHERE id = ?`, e.grantID); err != nil {
		t.Fatal(err)
	}
	r := e.post("/oauth2/introspect", otherID, url.Values{"token": {tok}})
	if r.status != 200 || r.body["active"] != false {
		t.Errorf("introspection of a token whose grant is gone: %d %s, want active false", r.status, r.raw)
	}
}
