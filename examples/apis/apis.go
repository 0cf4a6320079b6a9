// Package apis holds the demo's downstream APIs, an orders API and a billing API, built on
// the downstream package: each verifies Mandate tokens for its own audience, checks the
// scope its route needs, answers only for the user the token names (never for a service
// actor, whose name could be anyone's user id), and records every call it served (user,
// agent, mode, trace id) so the demo can show what the API saw.
package apis

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/mandatehq/mandate/downstream"
)

// Call is one request an API served.
type Call struct {
	Time     time.Time
	API      string
	Route    string
	User     string
	Tenant   string
	AgentID  string
	Mode     string
	TraceID  string // from the token (the trace that obtained it)
	Header   string // the traceparent header of this very call
	ClientID string
}

// Recorder collects calls; safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	calls []Call
}

// Calls returns the calls so far.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...)
}

func (r *Recorder) add(api string, req *http.Request, p *downstream.Principal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, Call{
		Time: time.Now(), API: api, Route: req.Pattern, User: p.User, Tenant: p.Tenant,
		AgentID: p.Agent.Sub, Mode: p.Mode, TraceID: p.TraceID, Header: req.Header.Get("traceparent"), ClientID: p.ClientID,
	})
}

// orders are the demo's orders, by tenant and user.
var orders = map[string]map[string]string{
	"acme/alice": {"A-1001": "shipped", "A-1002": "processing"},
	"acme/bob":   {"B-2001": "delivered"},
	"acme/carol": {"C-3001": "cancelled"},
}

var balances = map[string]string{"acme/alice": "1250.00 EUR", "acme/bob": "-20.50 EUR", "acme/carol": "0.00 EUR"}

// Orders is the orders API (audience orders_api). Its one route,
// GET /orders/{id} (scope orders:read), verifies through introspection when online is
// true, so a revoked grant stops it at once.
func Orders(v *downstream.Verifier, online bool, rec *Recorder) http.Handler {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := forUser(w, r)
		if !ok {
			return
		}
		rec.add("orders_api", r, p)
		status, ok := orders[p.Tenant+"/"+p.User][r.PathValue("id")]
		if !ok {
			// Another user's order is "not found", not "forbidden": no hint that it exists.
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "order not found"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"order_id": r.PathValue("id"), "status": status, "user": p.User})
	})
	mux := http.NewServeMux()
	if online {
		mux.Handle("GET /orders/{id}", v.ProtectOnline(h, "orders:read"))
	} else {
		mux.Handle("GET /orders/{id}", v.Protect(h, "orders:read"))
	}
	return mux
}

// Billing is the billing API (audience billing_api): GET /balance (scope balance:read),
// verified offline through the JWKS.
func Billing(v *downstream.Verifier, rec *Recorder) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /balance", v.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := forUser(w, r)
		if !ok {
			return
		}
		rec.add("billing_api", r, p)
		writeJSON(w, http.StatusOK, map[string]string{"user": p.User, "balance": balances[p.Tenant+"/"+p.User]})
	}), "balance:read"))
	return mux
}

// forUser returns the verified principal when the call is for a user, and answers 403
// otherwise. These APIs hold users' data: a service actor (ActorType service) has no User,
// and its name must never be looked up as one.
func forUser(w http.ResponseWriter, r *http.Request) (*downstream.Principal, bool) {
	p, ok := downstream.FromContext(r.Context())
	if !ok || p.ActorType != downstream.ActorUser || p.User == "" {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "this API answers for users only"})
		return nil, false
	}
	return p, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
