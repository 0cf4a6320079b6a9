package authz_test

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkTokenEndpoint is one granted token exchange through the whole handler (form
// parsing, fosite dispatch, client_secret_basic, exchange, response) on SQLite, without the
// network.
func BenchmarkTokenEndpoint(b *testing.B) {
	e := newEnv(b, openSQLite(b))
	bodies := make([]string, b.N)
	for i := range bodies {
		bodies[i] = exchangeForm(e.envelope(clientID, nil), ordersAPI).Encode()
	}
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(clientID+":"+e.secrets[clientID]))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		req := httptest.NewRequest(http.MethodPost, "/oauth2/token", strings.NewReader(bodies[i]))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", auth)
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
}
