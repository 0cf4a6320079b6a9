package exchange_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
)

const issuer = "https://mandate.example"

// countingStore is the real store with a record of the calls the exchange makes, and a hook
// to act between them (a hand-written wrapper, not a mock: every call reaches the database).
type countingStore struct {
	storage.Store
	mu           sync.Mutex
	calls        []string
	beforeRecord func()
}

func (c *countingStore) note(name string) {
	c.mu.Lock()
	c.calls = append(c.calls, name)
	c.mu.Unlock()
}

func (c *countingStore) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

func (c *countingStore) GetClient(ctx context.Context, id string) (*storage.Client, error) {
	c.note("GetClient")
	return c.Store.GetClient(ctx, id)
}

func (c *countingStore) GetAudience(ctx context.Context, id string) (*storage.Audience, error) {
	c.note("GetAudience")
	return c.Store.GetAudience(ctx, id)
}

func (c *countingStore) GetAudienceByResource(ctx context.Context, uri string) (*storage.Audience, error) {
	c.note("GetAudienceByResource")
	return c.Store.GetAudienceByResource(ctx, uri)
}

func (c *countingStore) FindActiveGrants(ctx context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	c.note("FindActiveGrants")
	return c.Store.FindActiveGrants(ctx, q)
}

func (c *countingStore) ActiveGrantsOf(ctx context.Context, tenant, clientID string, now time.Time, limit int) ([]storage.Grant, error) {
	c.note("ActiveGrantsOf")
	return c.Store.ActiveGrantsOf(ctx, tenant, clientID, now, limit)
}

func (c *countingStore) GetGrant(ctx context.Context, id string) (*storage.Grant, error) {
	c.note("GetGrant")
	return c.Store.GetGrant(ctx, id)
}

func (c *countingStore) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	c.note("RecordIssuance")
	if c.beforeRecord != nil {
		c.beforeRecord()
	}
	return c.Store.RecordIssuance(ctx, iss)
}

func (c *countingStore) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	c.note("AppendAudit")
	return c.Store.AppendAudit(ctx, r)
}

func (c *countingStore) InTx(ctx context.Context, fn func(storage.Store) error) error {
	c.note("InTx")
	return c.Store.InTx(ctx, fn)
}

type fixture struct {
	store   *countingStore
	svc     *exchange.Service
	keys    *keys.Manager
	signer  *envelope.Signer
	client  *storage.Client
	grantID string
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	ctx := context.Background()
	raw, err := sqlite.Open(ctx, filepath.Join(tb.TempDir(), "mandate.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = raw.Close() })
	f := &fixture{store: &countingStore{Store: raw}}
	master, _ := secret.NewMaster(strings.Repeat("k", 40))
	sealer, err := keys.NewSealer(master)
	if err != nil {
		tb.Fatal(err)
	}
	f.keys, err = keys.NewManager(raw, sealer, keys.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.keys.Ensure(ctx); err != nil {
		tb.Fatal(err)
	}
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.signer, _ = envelope.NewSigner(priv, "k1")
	pub, _ := jwk.Import(priv.Public())
	_ = pub.Set(jwk.KeyIDKey, "k1")
	jwks, _ := json.Marshal(map[string]any{"keys": []jwk.Key{pub}})
	now := time.Now()
	f.client = &storage.Client{ID: "mcp", TokenEndpointAuthMethod: "client_secret_basic", JWKS: jwks,
		GrantTypes:    []string{exchange.GrantTypeTokenExchange, exchange.GrantTypeClientCredentials},
		AllowedScopes: []string{"orders:read"}, CreatedAt: now, UpdatedAt: now}
	must(tb, raw.CreateClient(ctx, f.client))
	must(tb, raw.CreateAudience(ctx, &storage.Audience{ID: "orders_api", ResourceURIs: []string{"https://orders"},
		Scopes: []string{"orders:read", "orders:write"}, CreatedAt: now, UpdatedAt: now}))
	must(tb, raw.CreateAudience(ctx, &storage.Audience{ID: "billing_api", Scopes: []string{"billing:read"},
		CreatedAt: now, UpdatedAt: now}))
	f.grantID = storage.NewID("grt")
	must(tb, raw.CreateGrant(ctx, &storage.Grant{ID: f.grantID, Tenant: "acme", Subject: storage.AnySubject, ClientID: "mcp",
		Audiences: []string{"orders_api"}, Scopes: []string{"orders:read"}, Modes: []string{envelope.ModeOnBehalfOf},
		NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), CreatedAt: now}))
	f.svc, err = exchange.New(exchange.Deps{Store: f.store, Verifier: &envelope.Verifier{Issuer: issuer}, Signer: f.keys},
		exchange.Config{Issuer: issuer})
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// A grant revoked behind the cache's back (by another replica, say) issues nothing: the commit
// re-checks it. The cached list is then forgotten, so the next request reads the store again.
func TestCachedGrantRevokedElsewhereIssuesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.svc.Exchange(ctx, f.request(f.envelope(t, nil), "orders_api")); err != nil {
		t.Fatal(err)
	}
	// Revoke through the raw store: no admin API, so no cache invalidation on this replica.
	if _, err := f.store.Store.RevokeGrant(ctx, f.grantID, "admin", "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	f.store.take()
	env := f.envelope(t, nil)
	_, err := f.svc.Exchange(ctx, f.request(env, "orders_api"))
	if e := exchange.AsError(err); e == nil || e.Reason != exchange.ReasonGrantRevoked {
		t.Fatalf("exchange under a revoked cached grant = %v, want %s", err, exchange.ReasonGrantRevoked)
	}
	if got := f.store.take(); !slices.Contains(got, "RecordIssuance") || slices.Contains(got, "ActiveGrantsOf") {
		t.Fatalf("calls %v: the cached grant should have been tried and refused at commit", got)
	}
	_, err = f.svc.Exchange(ctx, f.request(env, "orders_api"))
	if e := exchange.AsError(err); e == nil || e.Reason != exchange.ReasonNoActiveGrant {
		t.Fatalf("next exchange = %v, want %s from a fresh lookup", err, exchange.ReasonNoActiveGrant)
	}
	if got := f.store.take(); !slices.Contains(got, "ActiveGrantsOf") {
		t.Fatalf("calls %v: the revoked grant's cached list was not forgotten", got)
	}
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

func (f *fixture) envelope(tb testing.TB, mut func(*envelope.Claims)) string {
	tb.Helper()
	c := envelope.Claims{
		Issuer: "mcp", Audience: envelope.Audience{issuer},
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: "u1", Tenant: "acme"},
		Agent:         envelope.Agent{ID: "agent"},
		Session:       envelope.Session{ID: "s1"},
		Authorization: envelope.Authorization{Scopes: []string{"orders:read"}},
		Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf},
	}
	if mut != nil {
		mut(&c)
	}
	tok, err := f.signer.Sign(c)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func (f *fixture) request(tok, aud string) exchange.Request {
	return exchange.Request{Client: f.client, SubjectToken: tok, SubjectTokenType: envelope.TokenType, Audiences: []string{aud}}
}

// The hot path: with clients, audiences and the grant lookup cached, a granted exchange makes
// exactly one store call, RecordIssuance.
func TestGrantedExchangeRoundTrips(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.svc.Exchange(ctx, f.request(f.envelope(t, nil), "orders_api")); err != nil {
		t.Fatal(err)
	}
	if got, want := f.store.take(), []string{"GetAudience", "ActiveGrantsOf", "RecordIssuance"}; !slices.Equal(got, want) {
		t.Errorf("cold: calls %v, want %v", got, want)
	}
	// Other users and agents of the tenant are answered from the client's cached list.
	for i := range 3 {
		res, err := f.svc.Exchange(ctx, f.request(f.envelope(t, func(c *envelope.Claims) {
			c.Actor.Sub, c.Agent.ID = fmt.Sprintf("u%d", i+2), fmt.Sprintf("agent%d", i)
		}), "orders_api"))
		if err != nil {
			t.Fatal(err)
		}
		if res.Scope != "orders:read" || res.ExpiresIn != 300 || res.IssuedTokenType != exchange.TokenTypeAccessToken {
			t.Errorf("result %+v", res)
		}
		if got, want := f.store.take(), []string{"RecordIssuance"}; !slices.Equal(got, want) {
			t.Errorf("warm: calls %v, want %v", got, want)
		}
	}
	// A refusal writes its audit record.
	_, err := f.svc.Exchange(ctx, f.request(f.envelope(t, nil), "nope"))
	if e := exchange.AsError(err); e == nil || e.Code != exchange.CodeInvalidTarget {
		t.Fatalf("unknown audience: %v", err)
	}
	if got := f.store.take(); !slices.Equal(got, []string{"GetAudience", "AppendAudit"}) {
		t.Errorf("refusal: calls %v", got)
	}
}

// A grant revoked after FindActiveGrants but before the commit: RecordIssuance re-checks it,
// nothing is issued, and the refusal says why.
func TestGrantRevokedBeforeCommit(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.store.beforeRecord = func() {
		if _, err := f.store.Store.RevokeGrant(ctx, f.grantID, "admin", "race", time.Now()); err != nil {
			t.Error(err)
		}
	}
	tok := f.envelope(t, nil)
	_, err := f.svc.Exchange(ctx, f.request(tok, "orders_api"))
	e := exchange.AsError(err)
	if e == nil || e.Code != exchange.CodeInvalidRequest || e.Reason != exchange.ReasonGrantRevoked {
		t.Fatalf("err = %v, want invalid_request grant_revoked", err)
	}
	items, _, err := f.store.ListAudit(ctx, storage.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Outcome != storage.OutcomeDenied || items[0].TokenJTI != "" || items[0].Reason != exchange.ReasonGrantRevoked {
		t.Errorf("audit %+v, want one denial without a token jti", items)
	}
}

// Concurrent exchanges of one envelope for one audience: exactly one wins.
func TestConcurrentReplay(t *testing.T) {
	f := newFixture(t)
	tok := f.envelope(t, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted, replayed := 0, 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.svc.Exchange(context.Background(), f.request(tok, "orders_api"))
			mu.Lock()
			defer mu.Unlock()
			switch e := exchange.AsError(err); {
			case err == nil:
				granted++
			case e != nil && e.Reason == exchange.ReasonReplay:
				replayed++
			default:
				t.Errorf("unexpected: %v", err)
			}
		}()
	}
	wg.Wait()
	if granted != 1 || replayed != 7 {
		t.Errorf("granted %d replayed %d, want 1 and 7", granted, replayed)
	}
}

// The catalog serves cached records until their TTL and drops them on Invalidate.
func TestCatalogInvalidate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cat := f.svc.Catalog()
	if _, err := cat.Client(ctx, "mcp"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Store.UpdateClient(ctx, "mcp", func(c *storage.Client) error { c.Disabled = true; return nil }); err != nil {
		t.Fatal(err)
	}
	f.store.take()
	c, _ := cat.Client(ctx, "mcp")
	if c.Disabled || len(f.store.take()) != 0 {
		t.Fatal("expected the cached client without a store call")
	}
	f.svc.InvalidateClient("mcp")
	c, _ = cat.Client(ctx, "mcp")
	if !c.Disabled {
		t.Error("Invalidate did not reload")
	}
}

// BenchmarkExchange is one granted exchange on SQLite with warm caches: envelope
// verification, policy, signing and the RecordIssuance transaction.
func BenchmarkExchange(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	toks := make([]string, b.N)
	for i := range toks {
		toks[i] = f.envelope(b, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := f.svc.Exchange(ctx, f.request(toks[i], "orders_api")); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	calls := len(f.store.take()) - 1 // the first, cold exchange also read the audience
	b.ReportMetric(float64(calls)/float64(b.N), "storecalls/op")
}

// A client that registered a jwks_uri: the set is fetched (once) and shared per URI.
func TestRemoteKeySet(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(f.client.JWKS)
	}))
	defer srv.Close()
	now := time.Now()
	remote := &storage.Client{ID: "mcp-remote", JWKSURI: srv.URL + "/jwks.json",
		GrantTypes: []string{exchange.GrantTypeTokenExchange}, CreatedAt: now, UpdatedAt: now}
	must(t, f.store.CreateClient(ctx, remote))
	must(t, f.store.CreateGrant(ctx, &storage.Grant{ID: storage.NewID("grt"), Tenant: "acme", Subject: "u1", ClientID: remote.ID,
		Audiences: []string{"orders_api"}, Scopes: []string{"orders:read"}, NotBefore: now.Add(-time.Minute),
		ExpiresAt: now.Add(time.Hour), CreatedAt: now}))
	svc, err := exchange.New(exchange.Deps{Store: f.store, Verifier: &envelope.Verifier{Issuer: issuer}, Signer: f.keys,
		KeySets: exchange.NewKeySets(exchange.RemoteKeySets(envelope.RemoteOptions{AllowLoopback: true}))},
		exchange.Config{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		tok := f.envelope(t, func(c *envelope.Claims) { c.Issuer = remote.ID; c.Agent.ClientID = remote.ID })
		req := exchange.Request{Client: remote, SubjectToken: tok, SubjectTokenType: envelope.JWTTokenType, Audiences: []string{"orders_api"}}
		if _, err := svc.Exchange(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches of the jwks_uri, want 1", n)
	}
}

// Made-up ids fill the catalog's memory of what does not exist, never what does: a flood of
// unknown client ids must not flush the real clients from the cache (each flush would send
// every request of every client back to the database).
func TestCatalogUnknownIDsDoNotEvictKnownOnes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// A TTL far longer than the test, so only eviction can make an entry go.
	cat := exchange.NewCatalog(f.store, time.Hour, nil)
	if _, err := cat.Client(ctx, "mcp"); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Audience(ctx, "orders_api"); err != nil {
		t.Fatal(err)
	}
	for i := range 10050 {
		id := "junk-" + strings.Repeat("x", 20) + string(rune('a'+i%26)) + strconv.Itoa(i)
		if _, err := cat.Client(ctx, id); err == nil {
			t.Fatalf("made-up client %s found", id)
		}
		if _, err := cat.Audience(ctx, id); err == nil {
			t.Fatalf("made-up audience %s found", id)
		}
	}
	f.store.take()
	if _, err := cat.Client(ctx, "mcp"); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Audience(ctx, "orders_api"); err != nil {
		t.Fatal(err)
	}
	if calls := f.store.take(); len(calls) != 0 {
		t.Errorf("after a flood of unknown ids, the known client and audience cost store calls %v: the flood evicted them", calls)
	}
}

// Grant matching is the same whether the client's grants in the tenant are few (one cached
// list serves every user) or many (looked up per user): subject, agent and tenant still
// decide, and a client with many grants costs one lookup per user, not per exchange.
func TestGrantMatchingFewOrMany(t *testing.T) {
	for _, many := range []bool{false, true} {
		t.Run(fmt.Sprintf("many=%v", many), func(t *testing.T) {
			f := newFixture(t)
			f.client.AllowedScopes = append(f.client.AllowedScopes, "billing:read")
			ctx := context.Background()
			now := time.Now()
			grant := func(subject, agent string, audiences ...string) {
				must(t, f.store.Store.CreateGrant(ctx, &storage.Grant{ID: storage.NewID("grt"), Tenant: "acme", Subject: subject,
					ClientID: "mcp", AgentID: agent, Audiences: audiences, Scopes: []string{"orders:read", "billing:read"},
					Modes: []string{envelope.ModeOnBehalfOf}, NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), CreatedAt: now}))
			}
			grant("w", "a1", "billing_api")
			if many {
				for i := range 64 { // with the fixture's "*" grant and w's: 66, over the 64 a list holds
					grant(fmt.Sprintf("filler%d", i), "", "billing_api")
				}
			}
			cases := []struct {
				sub, agent, tenant, aud string
				reason                  string // "" means granted
			}{
				{"w", "a1", "acme", "billing_api", ""},
				{"w", "a2", "acme", "billing_api", exchange.ReasonGrantNotCovering},
				{"x", "a1", "acme", "billing_api", exchange.ReasonGrantNotCovering},
				{"x", "a1", "acme", "orders_api", ""},
				{"w", "a1", "globex", "orders_api", exchange.ReasonNoActiveGrant},
				{"filler3", "a9", "acme", "billing_api", map[bool]string{false: exchange.ReasonGrantNotCovering, true: ""}[many]},
			}
			for _, c := range cases {
				env := f.envelope(t, func(e *envelope.Claims) {
					e.Actor.Sub, e.Agent.ID, e.Actor.Tenant = c.sub, c.agent, c.tenant
					e.Authorization.Scopes = []string{"orders:read", "billing:read"}
				})
				_, err := f.svc.Exchange(ctx, f.request(env, c.aud))
				got := ""
				if err != nil {
					e := exchange.AsError(err)
					if e == nil {
						t.Fatalf("%+v: %v", c, err)
					}
					got = e.Reason
				}
				if got != c.reason {
					t.Errorf("%s/%s in %s to %s: reason %q, want %q", c.sub, c.agent, c.tenant, c.aud, got, c.reason)
				}
			}
			// Again for w: with few grants the client's list answers; with many, w's own.
			f.store.take()
			if _, err := f.svc.Exchange(ctx, f.request(f.envelope(t, func(e *envelope.Claims) {
				e.Actor.Sub, e.Agent.ID = "w", "a1"
				e.Authorization.Scopes = []string{"billing:read"}
			}), "billing_api")); err != nil {
				t.Fatal(err)
			}
			if got := f.store.take(); !slices.Equal(got, []string{"RecordIssuance"}) {
				t.Errorf("repeat exchange: calls %v, want only the commit", got)
			}
			// A user not seen before: one per-user lookup when there are many, none when few.
			f.store.take()
			if _, err := f.svc.Exchange(ctx, f.request(f.envelope(t, func(e *envelope.Claims) { e.Actor.Sub = "newcomer" }), "orders_api")); err != nil {
				t.Fatal(err)
			}
			want := []string{"RecordIssuance"}
			if many {
				want = []string{"FindActiveGrants", "RecordIssuance"}
			}
			if got := f.store.take(); !slices.Equal(got, want) {
				t.Errorf("new user: calls %v, want %v", got, want)
			}
		})
	}
}
