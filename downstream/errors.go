package downstream

import (
	"encoding/json"
	"net/http"
	"strings"
)

// authError is an RFC 6750 §3 answer. An empty code is the bare challenge sent when the
// request carried no credentials (§3.1: no error code then).
type authError struct {
	status int
	code   string
	desc   string
	scope  string
}

func (e *authError) Error() string { return e.code + ": " + e.desc }

// bearerToken reads the token from the Authorization header (RFC 6750 §2.1). Other ways
// of sending a token (form body, query) are not supported: a token in a URL ends up in
// logs.
func bearerToken(r *http.Request) (string, error) {
	if r.URL.Query().Has("access_token") {
		return "", &authError{status: http.StatusBadRequest, code: "invalid_request", desc: "send the token in the Authorization header, not the URL"}
	}
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 {
		return "", &authError{status: http.StatusUnauthorized}
	}
	if len(vals) > 1 {
		return "", &authError{status: http.StatusBadRequest, code: "invalid_request", desc: "more than one Authorization header"}
	}
	scheme, token, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		// Another scheme (Basic, DPoP, ...) carries no bearer token: challenge for one.
		return "", &authError{status: http.StatusUnauthorized}
	}
	token = strings.TrimLeft(token, " ")
	if token == "" || strings.ContainsAny(token, " \t") {
		return "", &authError{status: http.StatusBadRequest, code: "invalid_request", desc: "malformed Authorization header"}
	}
	return token, nil
}

// writeError writes the WWW-Authenticate challenge and a small JSON body with the same
// error code.
func writeError(w http.ResponseWriter, realm string, e *authError) {
	var params []string
	if realm != "" {
		params = append(params, `realm="`+quotable(realm)+`"`)
	}
	if e.code != "" {
		params = append(params, `error="`+e.code+`"`)
		if e.desc != "" {
			params = append(params, `error_description="`+quotable(e.desc)+`"`)
		}
		if e.scope != "" {
			params = append(params, `scope="`+quotable(e.scope)+`"`)
		}
	}
	challenge := "Bearer"
	if len(params) > 0 {
		challenge += " " + strings.Join(params, ", ")
	}
	h := w.Header()
	h.Set("WWW-Authenticate", challenge)
	h.Set("Cache-Control", "no-store")
	if e.code == "" {
		w.WriteHeader(e.status)
		return
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": e.code, "error_description": e.desc})
}

func writeUnavailable(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Retry-After", "5")
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": "temporarily_unavailable", "error_description": "the token cannot be verified right now"})
}

// quotable keeps only the characters RFC 6750 §3 allows inside a quoted parameter
// (%x20-21 / %x23-5B / %x5D-7E).
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}
