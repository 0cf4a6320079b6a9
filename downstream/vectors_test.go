package downstream

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"
)

// The shared vectors (testdata/vectors/access_tokens.json, sdk-contract §4): every SDK's
// verifier gives the same verdicts and the same principal.
func TestAccessTokenVectors(t *testing.T) {
	raw, err := os.ReadFile("../testdata/vectors/access_tokens.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Issuer     string          `json:"issuer"`
		Audience   string          `json:"audience"`
		Now        int64           `json:"now"`
		Leeway     int64           `json:"leeway"`
		Algorithms []string        `json:"algorithms"`
		JWKS       json.RawMessage `json:"jwks"`
		Vectors    []struct {
			Name      string   `json:"name"`
			Token     string   `json:"token"`
			Scopes    []string `json:"required_scopes"`
			Valid     bool     `json:"valid"`
			Error     string   `json:"error"`
			Principal *struct {
				ActorType   string   `json:"actor_type"`
				User        string   `json:"user"`
				Service     string   `json:"service"`
				Tenant      string   `json:"tenant"`
				Subject     string   `json:"subject"`
				Mode        string   `json:"mode"`
				Agent       Actor    `json:"agent"`
				PriorActors []Actor  `json:"prior_actors"`
				ClientID    string   `json:"client_id"`
				Scopes      []string `json:"scopes"`
				TraceID     string   `json:"trace_id"`
				SessionID   string   `json:"session_id"`
				GrantID     string   `json:"grant_id"`
				JTI         string   `json:"jti"`
				IAT         int64    `json:"iat"`
				EXP         int64    `json:"exp"`
			} `json:"principal"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(doc.JWKS) }))
	defer jwks.Close()
	now := time.Unix(doc.Now, 0)
	v, err := New(Config{Issuer: doc.Issuer, Audience: doc.Audience, JWKSURL: jwks.URL, Algorithms: doc.Algorithms,
		Leeway: time.Duration(doc.Leeway) * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, vec := range doc.Vectors {
		t.Run(vec.Name, func(t *testing.T) {
			rec, p := serveOnce(v, "Bearer "+vec.Token, vec.Scopes...)
			if !vec.Valid {
				want := map[string]int{"invalid_token": 401, "insufficient_scope": 403}[vec.Error]
				if rec.Code != want || rec.Code == 200 {
					t.Fatalf("%d %s, want %d %s", rec.Code, rec.Header().Get("WWW-Authenticate"), want, vec.Error)
				}
				return
			}
			if rec.Code != 200 || p == nil {
				t.Fatalf("%d %s, want the token accepted", rec.Code, rec.Header().Get("WWW-Authenticate"))
			}
			w := vec.Principal
			if p.ActorType != w.ActorType || p.User != w.User || p.Service != w.Service || p.Tenant != w.Tenant ||
				p.Subject != w.Subject || p.Mode != w.Mode || p.Agent != w.Agent || p.ClientID != w.ClientID ||
				p.TraceID != w.TraceID || p.SessionID != w.SessionID || p.GrantID != w.GrantID || p.JTI != w.JTI ||
				p.IssuedAt.Unix() != w.IAT || p.ExpiresAt.Unix() != w.EXP || p.Audience != doc.Audience {
				t.Errorf("principal %+v\nwant %+v", p, w)
			}
			if !slices.Equal(p.Scopes, w.Scopes) || len(p.PriorActors) != len(w.PriorActors) ||
				(len(w.PriorActors) > 0 && !slices.Equal(p.PriorActors, w.PriorActors)) {
				t.Errorf("scopes %v prior actors %v, want %v %v", p.Scopes, p.PriorActors, w.Scopes, w.PriorActors)
			}
		})
	}
}
