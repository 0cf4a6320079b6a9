package boundary

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/mandatehq/mandate/envelope"
)

// sdk-contract §1: the SDK's table of reason kinds is testdata/reasons.json's.
func TestReasonKindsEqualReasonsJSON(t *testing.T) {
	raw, err := os.ReadFile("../testdata/reasons.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Reasons []struct {
			Reason string `json:"reason"`
			Kind   string `json:"kind"`
		} `json:"reasons"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, r := range doc.Reasons {
		if r.Kind != "" {
			want[r.Reason] = r.Kind
		}
	}
	if len(want) == 0 {
		t.Fatal("no reasons with a kind in testdata/reasons.json")
	}
	for reason, kind := range want {
		if got := reasonKinds[reason]; got != kind {
			t.Errorf("reason %s: kind %q in the SDK, %q in reasons.json", reason, got, kind)
		}
	}
	for reason := range reasonKinds {
		if _, ok := want[reason]; !ok {
			t.Errorf("reason %s is in the SDK's table but not in reasons.json", reason)
		}
	}
}

// An exchange refused by Mandate is an *ExchangeError carrying status, error, reason,
// description and Retry-After, whose Kind says what to do, and errors.Is works with the
// three sentinels. Without a reason (or with one the SDK does not know) 429, 5xx and network
// failures are "unavailable" and everything else "client_error".
func TestExchangeErrorKinds(t *testing.T) {
	type answer struct {
		status     int
		body       string
		retryAfter string
	}
	var current answer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if current.retryAfter != "" {
			w.Header().Set("Retry-After", current.retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(current.status)
		_, _ = w.Write([]byte(current.body))
	}))
	defer srv.Close()
	signer := func() *envelope.Signer {
		k, _ := envelopeKey()
		return k
	}()
	d, err := NewDelegator(DelegatorConfig{Issuer: "https://mandate.test", TokenURL: srv.URL, ClientID: "webapp",
		ClientSecret: "s3cret", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := FromContext(aliceCtx())
	cases := []struct {
		name     string
		answer   answer
		kind     string
		sentinel error
		reason   string
		retry    time.Duration
	}{
		{"no grant", answer{400, `{"error":"invalid_request","error_description":"no active delegation grant","reason":"no_active_grant"}`, ""},
			KindGrantRequired, ErrGrantRequired, "no_active_grant", 0},
		{"scope", answer{400, `{"error":"invalid_scope","reason":"scope_not_allowed"}`, ""}, KindGrantRequired, ErrGrantRequired, "scope_not_allowed", 0},
		{"replayed", answer{400, `{"error":"invalid_request","reason":"envelope_replayed"}`, ""}, KindClientError, ErrClientError, "envelope_replayed", 0},
		{"bad client", answer{401, `{"error":"invalid_client","reason":"client_authentication_failed"}`, ""}, KindClientError, ErrClientError, "client_authentication_failed", 0},
		{"throttled", answer{429, `{"error":"temporarily_unavailable","reason":"rate_limited"}`, "7"}, KindUnavailable, ErrUnavailable, "rate_limited", 7 * time.Second},
		{"storage down", answer{503, `{"error":"temporarily_unavailable","reason":"storage_unavailable"}`, "Wed, 21 Oct 2099 07:28:00 GMT"}, KindUnavailable, ErrUnavailable, "storage_unavailable", -1},
		{"unknown reason, 400", answer{400, `{"error":"invalid_request","reason":"from_the_future"}`, ""}, KindClientError, ErrClientError, "from_the_future", 0},
		{"unknown reason, 503", answer{503, `{"error":"temporarily_unavailable","reason":"from_the_future"}`, ""}, KindUnavailable, ErrUnavailable, "from_the_future", 0},
		{"no body, 502", answer{502, `<html>bad gateway</html>`, ""}, KindUnavailable, ErrUnavailable, "", 0},
		{"no reason, 429", answer{429, `{"error":"slow_down"}`, "2"}, KindUnavailable, ErrUnavailable, "", 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			current = tc.answer
			_, err := d.Token(context.Background(), alice, "orders_api")
			var xe *ExchangeError
			if !errors.As(err, &xe) {
				t.Fatalf("err %v is not an *ExchangeError", err)
			}
			if xe.Kind() != tc.kind || xe.Reason != tc.reason || xe.Status != tc.answer.status || xe.Audience != "orders_api" {
				t.Errorf("%+v: kind %q, want %q, reason %q", xe, xe.Kind(), tc.kind, tc.reason)
			}
			if tc.retry >= 0 && xe.RetryAfter != tc.retry || tc.retry < 0 && xe.RetryAfter < time.Hour {
				t.Errorf("RetryAfter %s, want %s", xe.RetryAfter, tc.retry)
			}
			for _, s := range []error{ErrGrantRequired, ErrClientError, ErrUnavailable} {
				if errors.Is(err, s) != (s == tc.sentinel) {
					t.Errorf("errors.Is(err, %v) = %v", s, errors.Is(err, s))
				}
			}
		})
	}
	// A network failure is unavailable too.
	srv.Close()
	_, err = d.Token(context.Background(), alice, "orders_api")
	var xe *ExchangeError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &xe) || xe.Kind() != KindUnavailable {
		t.Errorf("network failure: %v", err)
	}
}
