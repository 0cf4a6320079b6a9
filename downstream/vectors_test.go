package downstream

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/mandatehq/mandate/internal/vectors"
)

// The shared vectors (testdata/vectors/access_tokens.json, docs/vectors.md): every SDK's
// verifier gives the same verdicts and the same principal.
func TestAccessTokenVectors(t *testing.T) {
	doc, err := vectors.AccessTokens()
	if err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(doc.JWKS) }))
	defer jwks.Close()
	now := doc.Time()
	v, err := New(Config{Issuer: doc.Issuer, Audience: doc.Audience, JWKSURL: jwks.URL, Algorithms: doc.Algorithms,
		Leeway: time.Duration(doc.Leeway) * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	actors := func(as []Actor) []vectors.Actor {
		out := []vectors.Actor{}
		for _, a := range as {
			out = append(out, vectors.Actor{Sub: a.Sub, ClientID: a.ClientID})
		}
		return out
	}
	for _, vec := range doc.Vectors {
		t.Run(vec.Name, func(t *testing.T) {
			rec, p := serveOnce(v, "Bearer "+vec.Token, vec.RequiredScopes...)
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
			got := vectors.Principal{
				ActorType: p.ActorType, User: p.User, Service: p.Service, Tenant: p.Tenant, Subject: p.Subject,
				Mode: p.Mode, Agent: vectors.Actor{Sub: p.Agent.Sub, ClientID: p.Agent.ClientID},
				PriorActors: actors(p.PriorActors), ClientID: p.ClientID, Scopes: p.Scopes, TraceID: p.TraceID,
				SessionID: p.SessionID, GrantID: p.GrantID, JTI: p.JTI, IssuedAt: p.IssuedAt.Unix(), ExpiresAt: p.ExpiresAt.Unix(),
			}
			if got.ActorType != w.ActorType || got.User != w.User || got.Service != w.Service || got.Tenant != w.Tenant ||
				got.Subject != w.Subject || got.Mode != w.Mode || got.Agent != w.Agent || got.ClientID != w.ClientID ||
				got.TraceID != w.TraceID || got.SessionID != w.SessionID || got.GrantID != w.GrantID || got.JTI != w.JTI ||
				got.IssuedAt != w.IssuedAt || got.ExpiresAt != w.ExpiresAt || p.Audience != doc.Audience ||
				!slices.Equal(got.Scopes, w.Scopes) || !slices.Equal(got.PriorActors, w.PriorActors) {
				t.Errorf("principal %+v\nwant %+v", got, *w)
			}
		})
	}
}
