package authz

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// writeTokenResponse must put on the wire exactly what writeJSON does for the same map.
func TestWriteTokenResponseMatchesWriteJSON(t *testing.T) {
	for _, m := range []map[string]any{
		{"access_token": "eyJ.a.b", "token_type": "Bearer", "expires_in": int64(300), "scope": "a:read b&c <x>",
			"issued_token_type": "urn:ietf:params:oauth:token-type:access_token"},
		{"access_token": "t", "token_type": "Bearer", "expires_in": int64(0), "scope": ""},
		{"access_token": "t\u2028\xff\"", "token_type": "Bearer", "n": 7},
		{"access_token": "t", "token_type": "Bearer", "other": 1.5}, // falls back
	} {
		want, got := httptest.NewRecorder(), httptest.NewRecorder()
		writeJSON(want, http.StatusOK, m)
		writeTokenResponse(got, m)
		if got.Body.String() != want.Body.String() || got.Code != want.Code {
			t.Errorf("got %d %q, want %d %q", got.Code, got.Body, want.Code, want.Body)
		}
		for _, h := range []string{"Cache-Control", "Pragma", "Content-Type"} {
			if got.Header().Get(h) != want.Header().Get(h) {
				t.Errorf("%s: got %q, want %q", h, got.Header().Get(h), want.Header().Get(h))
			}
		}
		if cl := got.Header().Get("Content-Length"); cl != "" && cl != strconv.Itoa(got.Body.Len()) {
			t.Errorf("Content-Length %s for %d bytes", cl, got.Body.Len())
		}
	}
}
