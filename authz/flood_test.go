package authz_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/storage"
)

// fromAddress is a client whose connections come from the loopback address local (Linux
// routes all of 127.0.0.0/8 to lo), so a test can be two remote addresses at once.
func fromAddress(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, Proxy: nil}}
}

// postFrom sends form to path from client c, with Basic credentials id and secret.
func (e *env) postFrom(c *http.Client, path, id, secret string, form url.Values) *response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	r := &response{status: resp.StatusCode, header: resp.Header}
	_ = json.NewDecoder(resp.Body).Decode(&r.body)
	return r
}

func auditCount(t *testing.T, st storage.Store) int {
	t.Helper()
	n, cursor := 0, ""
	for {
		items, next, err := st.ListAudit(context.Background(), storage.AuditFilter{Page: storage.Page{Limit: 500, Cursor: cursor}})
		if err != nil {
			t.Fatal(err)
		}
		n += len(items)
		if next == "" {
			return n
		}
		cursor = next
	}
}

// SPEC §8: requests that fail client authentication do not grow the store one row each.
// 300 of them, with 300-character made-up client ids and with a real client's id, leave
// one aggregated record (count, window, a bounded sample of claimed ids), attributed to no
// client.
func TestFailedAuthenticationsDoNotGrowTheStore(t *testing.T) {
	eachBackend(t, func(t *testing.T, st storage.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		c := fromAddress("127.0.0.3")
		before := auditCount(t, st)
		for i := range 300 {
			id := strings.Repeat(string(rune('a'+i%26)), 300)
			if i%10 == 0 {
				id = clientID // a real client's id: no record may be planted under it
			}
			r := e.postFrom(c, "/oauth2/token", id, "mcs_guess", url.Values{"grant_type": {"client_credentials"}})
			if r.status != 401 && r.status != 429 {
				t.Fatalf("request %d: %d", i, r.status)
			}
			e.clock.Advance(100 * time.Millisecond) // 30 s in all: one window
		}
		if n := auditCount(t, st) - before; n != 0 {
			t.Fatalf("300 failed authentications wrote %d audit records before any aggregation", n)
		}
		e.clock.Advance(time.Minute)
		if err := e.handler.RecordAuthFailures(ctx, false); err != nil {
			t.Fatal(err)
		}
		items, _, err := st.ListAudit(ctx, storage.AuditFilter{Event: authz.EventClientAuthFailed})
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 1 || auditCount(t, st)-before != 1 {
			t.Fatalf("aggregated records: %+v; want exactly one", items)
		}
		rec := items[0]
		var d struct {
			Count, Throttled int
			Samples          []string  `json:"sample_client_ids"`
			Start            time.Time `json:"window_start"`
			End              time.Time `json:"window_end"`
		}
		if err := json.Unmarshal(rec.Detail, &d); err != nil {
			t.Fatal(err)
		}
		if rec.ClientID != "" || rec.RemoteAddr != "127.0.0.3" || rec.Outcome != storage.OutcomeDenied ||
			rec.Reason != authz.ReasonClientAuthFailed || d.Count+d.Throttled != 300 || d.End.Sub(d.Start) < 29*time.Second {
			t.Errorf("aggregated record %+v, detail %+v", rec, d)
		}
		if len(d.Samples) == 0 || len(d.Samples) > 5 {
			t.Errorf("%d sample client ids, want 1 to 5", len(d.Samples))
		}
		for _, s := range d.Samples {
			if len(s) > 64 {
				t.Errorf("a sample client id of %d bytes is kept, want at most 64", len(s))
			}
		}
		if items, _, _ := st.ListAudit(ctx, storage.AuditFilter{ClientID: clientID}); len(items) != 0 {
			t.Errorf("records under the real client id the failures claimed: %+v", items)
		}
		// Nothing more to write for that window.
		if err := e.handler.RecordAuthFailures(ctx, true); err != nil || auditCount(t, st)-before != 1 {
			t.Errorf("a second aggregation wrote more records (%v)", err)
		}
	})
}

// SPEC §8: an address that keeps failing is answered 429 with Retry-After, on every endpoint
// that authenticates clients, while clients at other addresses are served as before; once
// Retry-After has passed it may try again.
func TestAddressThatKeepsFailingIsThrottled(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	bad, good := fromAddress("127.0.0.4"), fromAddress("127.0.0.5")
	cc := url.Values{"grant_type": {"client_credentials"}}
	var throttled *response
	for i := range 100 {
		r := e.postFrom(bad, "/oauth2/token", "nobody", "x", cc)
		if r.status == http.StatusTooManyRequests {
			throttled = r
			if i < 20 {
				t.Errorf("throttled after %d failures, before the burst of 20 was spent", i)
			}
			break
		}
		if r.status != 401 {
			t.Fatalf("failure %d: %d", i, r.status)
		}
	}
	if throttled == nil {
		t.Fatal("100 failed authentications from one address, never throttled")
	}
	if throttled.str("error") != "temporarily_unavailable" || throttled.str("reason") != authz.ReasonRateLimited ||
		throttled.str("error_description") == "" || throttled.header.Get("Cache-Control") != "no-store" {
		t.Errorf("429 answer: %+v %v", throttled.body, throttled.header)
	}
	retry := throttled.header.Get("Retry-After")
	if retry == "" || retry == "0" {
		t.Errorf("Retry-After %q", retry)
	}
	// Even good credentials from that address wait; introspection and revocation too.
	tok := e.wantTokenString(t, e.postFrom(good, "/oauth2/token", clientID, e.secrets[clientID], exchangeForm(e.envelope(clientID, nil), ordersAPI)))
	for _, p := range []string{"/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"} {
		if r := e.postFrom(bad, p, clientID, e.secrets[clientID], url.Values{"token": {tok}, "grant_type": {"client_credentials"}}); r.status != 429 {
			t.Errorf("%s from the throttled address: %d, want 429", p, r.status)
		}
	}
	// Another address is served as usual.
	if r := e.postFrom(good, "/oauth2/introspect", otherID, e.secrets[otherID], url.Values{"token": {tok}}); r.status != 200 || r.body["active"] != true {
		t.Errorf("introspection from another address: %d %v", r.status, r.body)
	}
	e.clock.Advance(7 * time.Second) // one interval (6 s): one more try
	if r := e.postFrom(bad, "/oauth2/introspect", otherID, e.secrets[otherID], url.Values{"token": {tok}}); r.status != 200 {
		t.Errorf("after Retry-After: %d, want 200", r.status)
	}
}

// The grant request endpoints authenticate clients too: their failures count toward the
// same throttle and aggregate, and a throttled address is refused there as well.
func TestGrantRequestEndpointsShareTheThrottle(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	bad := fromAddress("127.0.0.7")
	form := url.Values{"tenant": {tenant}, "subject": {userSub}, "audiences": {ordersAPI}}
	throttled := false
	for range 40 {
		r := e.postFrom(bad, authz.PathGrantRequests, "nobody", "x", form)
		if r.status == http.StatusTooManyRequests {
			throttled = r.str("reason") == authz.ReasonRateLimited && r.header.Get("Retry-After") != ""
			break
		}
		if r.status != 401 {
			t.Fatalf("grant request with bad credentials: %d %v", r.status, r.body)
		}
	}
	if !throttled {
		t.Fatal("40 failed authentications at the grant request endpoint, never throttled")
	}
	if r := e.postFrom(bad, "/oauth2/token", "nobody", "x", url.Values{"grant_type": {"client_credentials"}}); r.status != 429 {
		t.Errorf("the token endpoint from the same address: %d, want 429", r.status)
	}
	if err := e.handler.RecordAuthFailures(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	items, _, err := e.store.ListAudit(context.Background(), storage.AuditFilter{Event: authz.EventClientAuthFailed})
	if err != nil || len(items) != 1 || !strings.Contains(string(items[0].Detail), `"grant_requests":`) {
		t.Errorf("aggregated record %+v, %v; want one counting the grant request endpoint", items, err)
	}
}
