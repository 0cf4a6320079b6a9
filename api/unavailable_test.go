package api

import (
	"context"
	"fmt"
	"testing"

	"github.com/mandatehq/mandate/storage"
)

// authDown is an Authenticator whose store does not answer.
type authDown struct{}

func (authDown) AuthenticateBearer(context.Context, string) (Principal, error) {
	return Principal{}, fmt.Errorf("%w: storage: no answer in 2s", ErrUnavailable)
}

// A valid admin token met with a store that does not answer is 503 with Retry-After, not
// 401 "the bearer token is not valid" (reliability run, Postgres outage).
func TestAdminTokenUncheckableIs503(t *testing.T) {
	e := newEnvAuth(t, openSQLite(t), authDown{})
	r := e.call(req{method: "GET", path: "/admin/v1/clients", token: tokAdmin})
	p := wantProblem(t, r, 503)
	if p.Type != problemUnavailable {
		t.Errorf("problem type %q, want %q", p.Type, problemUnavailable)
	}
	if got := r.header.Get("Retry-After"); got != retryAfterSeconds {
		t.Errorf("Retry-After = %q, want %q", got, retryAfterSeconds)
	}
	if r.header.Get("Www-Authenticate") != "" {
		t.Errorf("a 503 carries a bearer challenge: %q", r.header.Get("Www-Authenticate"))
	}
	// Any other failure to authenticate stays 401.
	wantProblem(t, newEnv(t, openSQLite(t)).call(req{method: "GET", path: "/admin/v1/clients", token: "forged"}), 401)
}

// storeTimesOut answers every call the way the server's deadline makes a stuck store answer.
type storeTimesOut struct{ storage.Store }

var errTimedOut = fmt.Errorf("%w: no answer within 2s", storage.ErrUnavailable)

func (storeTimesOut) ListClients(context.Context, storage.Page) ([]storage.Client, string, error) {
	return nil, "", errTimedOut
}

func (storeTimesOut) InTx(context.Context, func(storage.Store) error) error { return errTimedOut }

func TestAdminStoreTimeoutIs503(t *testing.T) {
	e := newEnv(t, storeTimesOut{openSQLite(t)})
	for _, r := range []req{
		{method: "GET", path: "/admin/v1/clients"},
		{method: "POST", path: "/admin/v1/clients", body: map[string]any{"client_id": "c"}},
	} {
		r.token = tokAdmin
		got := e.call(r)
		if p := wantProblem(t, got, 503); p.Type != problemUnavailable {
			t.Errorf("%s %s: problem type %q", r.method, r.path, p.Type)
		}
		if got.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: 503 without Retry-After", r.method, r.path)
		}
	}
}
