package authz_test

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzTokenEndpoint throws arbitrary bodies and Authorization headers at the token endpoint,
// calling the handler directly so a panic fails the fuzzer. Every answer must be a JSON error
// or token with no-store, and never a 500.
func FuzzTokenEndpoint(f *testing.F) {
	e := newEnv(f, openSQLite(f))
	tok := e.envelope(clientID, nil)
	f.Add(exchangeForm(tok, ordersAPI).Encode(), "Basic "+base64.StdEncoding.EncodeToString([]byte(clientID+":"+e.secrets[clientID])))
	f.Add("grant_type=client_credentials&scope=%zz", "Basic !!!")
	f.Add("grant_type=urn:ietf:params:oauth:grant-type:token-exchange&client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion=a.b.c", "")
	f.Add("subject_token=a&subject_token=b&audience=&resource=x", "Bearer x")
	f.Fuzz(func(t *testing.T, body, authorization string) {
		req := httptest.NewRequest(http.MethodPost, "/oauth2/token", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 401, 413:
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if rec.Header().Get("Cache-Control") != "no-store" || !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Fatalf("headers %v", rec.Header())
		}
		if _, err := url.ParseQuery(body); err == nil && rec.Code == 413 {
			t.Fatalf("413 for a small body")
		}
	})
}
