package authz_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/storage"
)

// Bad bytes (NUL, invalid UTF-8) are refused at the protocol edge as the client's mistake.
// Postgres refuses NUL in text, so any that reached a client lookup or an audit record would
// have turned into 503 and an unaudited refusal.
func TestNULAndInvalidUTF8AreTheClientsMistake(t *testing.T) {
	eachBackend(t, func(t *testing.T, store storage.Store) {
		e := newEnv(t, store)
		ctx := context.Background()

		form := exchangeForm(e.envelope(clientID, nil), "orders\x00api")
		wantError(t, e.post("/oauth2/token", clientID, form), 400, "invalid_request")
		form = exchangeForm(e.envelope(clientID, nil), ordersAPI)
		form.Set("scope", "orders:read\xff")
		wantError(t, e.post("/oauth2/token", clientID, form), 400, "invalid_request")
		form.Del("scope")
		wantError(t, e.do("/oauth2/token", form, func(r *http.Request) {
			r.SetBasicAuth(url.QueryEscape(clientID+"\x00x"), "whatever")
		}), 401, "invalid_client")

		// A signed envelope whose identifiers hold a control character.
		c := e.claims(clientID)
		c.Actor.Sub = "user\x00123"
		wantError(t, e.post("/oauth2/token", clientID, exchangeForm(e.rawEnvelope(clientID, c), ordersAPI)), 400, "invalid_request")

		// The envelope's refusal is the authenticated client's own record. The three refused
		// before authentication are nobody's: one aggregated record, whose sample of claimed
		// client ids is made storable.
		if err := e.handler.RecordAuthFailures(ctx, true); err != nil {
			t.Fatal(err)
		}
		items, _, err := store.ListAudit(ctx, storage.AuditFilter{Outcome: storage.OutcomeDenied})
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 2 {
			t.Fatalf("%d denial records, want 2: %+v", len(items), items)
		}
		var sampled bool
		for _, it := range items {
			if strings.ContainsRune(it.ClientID, 0) || strings.ContainsRune(it.ActorSub, 0) || strings.Contains(string(it.Detail), `\u0000`) {
				t.Errorf("audit record holds a NUL: %+v", it)
			}
			if it.Event == authz.EventClientAuthFailed && it.ClientID == "" &&
				strings.Contains(string(it.Detail), clientID+"\uFFFDx") {
				sampled = true
			}
		}
		if !sampled {
			t.Errorf("the failed authentication's (sanitized) client id is not in the aggregated record: %+v", items)
		}
	})
}
