package exchange_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/postgres/pgtest"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// writeGuard is the real store, counting the writes made while it is armed: Explain must
// make none.
type writeGuard struct {
	storage.Store
	armed  atomic.Bool
	writes atomic.Int32
}

func (g *writeGuard) wrote() {
	if g.armed.Load() {
		g.writes.Add(1)
	}
}

func (g *writeGuard) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	g.wrote()
	return g.Store.RecordIssuance(ctx, iss)
}

func (g *writeGuard) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	g.wrote()
	return g.Store.AppendAudit(ctx, r)
}

func (g *writeGuard) MarkUsed(ctx context.Context, m storage.ReplayMark, now time.Time) error {
	g.wrote()
	return g.Store.MarkUsed(ctx, m, now)
}

func (g *writeGuard) InTx(ctx context.Context, fn func(storage.Store) error) error {
	g.wrote()
	return g.Store.InTx(ctx, fn)
}

func (g *writeGuard) RevokeGrant(ctx context.Context, id, by, reason string, at time.Time) (*storage.Grant, error) {
	g.wrote()
	return g.Store.RevokeGrant(ctx, id, by, reason, at)
}

func (g *writeGuard) RevokeToken(ctx context.Context, jti string, iat, at time.Time) error {
	g.wrote()
	return g.Store.RevokeToken(ctx, jti, iat, at)
}

func (g *writeGuard) PruneAudit(ctx context.Context, before time.Time) (storage.AuditPruned, error) {
	g.wrote()
	return g.Store.PruneAudit(ctx, before)
}

func (g *writeGuard) PrepareAuditLog(ctx context.Context, now time.Time) error {
	g.wrote()
	return g.Store.PrepareAuditLog(ctx, now)
}

// explained runs Explain with the guard armed and fails the test on any write.
func (g *writeGuard) explained(t *testing.T, svc *exchange.Service, xr exchange.ExplainRequest) *exchange.Explanation {
	t.Helper()
	g.armed.Store(true)
	before := g.writes.Load()
	x, err := svc.Explain(context.Background(), xr)
	g.armed.Store(false)
	if err != nil {
		t.Fatalf("Explain: %v", err)
	}
	if n := g.writes.Load() - before; n != 0 {
		t.Fatalf("Explain wrote to the store %d times", n)
	}
	if len(x.Steps) != len(stepNames) {
		t.Fatalf("Explain reported %d steps, want %d", len(x.Steps), len(stepNames))
	}
	for i, s := range x.Steps {
		if s.Name != stepNames[i] {
			t.Fatalf("step %d is %q, want %q", i, s.Name, stepNames[i])
		}
	}
	return x
}

var stepNames = []string{exchange.StepClient, exchange.StepGrantType, exchange.StepParameters,
	exchange.StepSignature, exchange.StepEnvelope, exchange.StepTarget, exchange.StepMode, exchange.StepGrant,
	exchange.StepScopes, exchange.StepLifetime, exchange.StepIssuance}

// rawSign signs payload as an ES256 envelope with kid: any claims, including those the SDK's
// Signer refuses to sign, so the verifier's refusals are reachable.
func rawSign(tb testing.TB, priv *ecdsa.PrivateKey, kid string, payload []byte) string {
	tb.Helper()
	hdr, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": envelope.Type, "kid": kid})
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, priv, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// agreement is one store with two services over it: the endpoint's, whose clock is the
// world's, and another on the real clock that explains with At set to the world's time.
type agreement struct {
	t         *testing.T
	store     *writeGuard
	now       time.Time
	endpoint  *exchange.Service
	explainer *exchange.Service
	keys      map[string]*ecdsa.PrivateKey
	clients   map[string]*storage.Client
	grants    []*storage.Grant
}

func newAgreement(t *testing.T, raw storage.Store, now time.Time) *agreement {
	t.Helper()
	a := &agreement{t: t, store: &writeGuard{Store: raw}, now: now,
		keys: map[string]*ecdsa.PrivateKey{}, clients: map[string]*storage.Client{}}
	master, _ := secret.NewMaster(strings.Repeat("k", 40))
	sealer, err := keys.NewSealer(master)
	if err != nil {
		t.Fatal(err)
	}
	km, err := keys.NewManager(raw, sealer, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := km.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return now }
	a.endpoint, err = exchange.New(exchange.Deps{Store: a.store, Verifier: &envelope.Verifier{Issuer: issuer, Now: clock},
		Signer: km, Now: clock}, exchange.Config{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	a.explainer, err = exchange.New(exchange.Deps{Store: a.store, Verifier: &envelope.Verifier{Issuer: issuer},
		Signer: km}, exchange.Config{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// input is one exchange: a client, the envelope's claims and how they are signed, the target
// and the scopes.
type input struct {
	name     string
	client   string
	claims   []byte
	signer   string // whose key signs ("" for the client's own)
	audience string
	resource string
	scopes   []string
	token    string // set once signed, so a replay reuses it
}

// check runs Explain and then the endpoint on in, and fails the test where they disagree.
// It returns whether the exchange was granted, and whether its refusal said the user may
// grant access.
func (a *agreement) check(in *input, explainAt bool) (granted, userMayConsent bool) {
	t := a.t
	t.Helper()
	if in.token == "" {
		signer := in.signer
		if signer == "" {
			signer = in.client
		}
		in.token = rawSign(t, a.keys[signer], signer+"-k1", in.claims)
	}
	xr := exchange.ExplainRequest{ClientID: in.client, SubjectToken: in.token, Audience: in.audience,
		Resource: in.resource, Scopes: in.scopes}
	svc := a.endpoint
	if explainAt {
		svc, xr.At = a.explainer, a.now
	}
	x := a.store.explained(t, svc, xr)

	req := exchange.Request{Client: a.clients[in.client], SubjectToken: in.token, SubjectTokenType: envelope.TokenType,
		Scopes: in.scopes, ScopeGiven: len(in.scopes) > 0}
	if in.audience != "" {
		req.Audiences = []string{in.audience}
	}
	if in.resource != "" {
		req.Resources = []string{in.resource}
	}
	res, err := a.endpoint.Exchange(context.Background(), req)
	where := fmt.Sprintf("%s (explain at: %v)", in.name, explainAt)
	compare(t, where, x, res, err)

	// The same claims as a what-if question: everything but the signature step agrees.
	wx := exchange.ExplainRequest{ClientID: in.client, Claims: in.claims, Audience: in.audience,
		Resource: in.resource, Scopes: in.scopes, At: xr.At}
	w := a.store.explained(t, svc, wx)
	if w.Steps[3].Outcome != exchange.OutcomeSkipped || !w.WhatIf {
		t.Fatalf("%s: what-if: signature step %s, want skipped", where, w.Steps[3].Outcome)
	}
	if x.Refusal == nil || x.Steps[3].Outcome != exchange.OutcomeRefused {
		if err == nil {
			// The signed envelope was just used; its unsigned twin names the same jti.
			if w.Refusal == nil || w.Refusal.Reason != exchange.ReasonReplay {
				t.Fatalf("%s: what-if after the grant: %+v, want %s", where, w.Refusal, exchange.ReasonReplay)
			}
		} else {
			sameDecision(t, where+" what-if", x, w)
		}
	}
	return err == nil, x.Refusal != nil && x.Refusal.UserMayConsent
}

// compare holds an explanation to what the endpoint did.
func compare(t *testing.T, where string, x *exchange.Explanation, res *exchange.Result, err error) {
	t.Helper()
	if err != nil {
		e := exchange.AsError(err)
		if e == nil {
			t.Fatalf("%s: endpoint: %v", where, err)
		}
		if x.Decision != exchange.DecisionRefused || x.Refusal == nil {
			t.Fatalf("%s: endpoint refused %s (%s), explain says %s", where, e.Code, e.Reason, x.Decision)
		}
		if x.Refusal.Code != e.Code || x.Refusal.Reason != e.Reason || x.Refusal.Description != e.Description ||
			x.Refusal.UserMayConsent != e.UserMayConsent {
			t.Fatalf("%s: endpoint refused %s/%s %q, explain %s/%s %q", where, e.Code, e.Reason, e.Description,
				x.Refusal.Code, x.Refusal.Reason, x.Refusal.Description)
		}
		refused := 0
		for _, s := range x.Steps {
			if s.Outcome == exchange.OutcomeRefused {
				refused++
				if s.Refusal != x.Refusal {
					t.Fatalf("%s: the refused step does not carry the refusal", where)
				}
			}
		}
		if refused != 1 {
			t.Fatalf("%s: %d steps refused, want 1", where, refused)
		}
		return
	}
	if x.Decision != exchange.DecisionGranted || x.Refusal != nil {
		t.Fatalf("%s: endpoint granted, explain says %s (%v)", where, x.Decision, x.Refusal)
	}
	for _, s := range x.Steps {
		if s.Outcome != exchange.OutcomePassed {
			t.Fatalf("%s: granted, but step %s %s", where, s.Name, s.Outcome)
		}
	}
	if got := strings.Join(x.Scopes, " "); got != res.Scope {
		t.Fatalf("%s: endpoint issued scopes %q, explain %q", where, res.Scope, got)
	}
	if int64(x.Lifetime/time.Second) != res.ExpiresIn || x.IssuedTokenType != res.IssuedTokenType {
		t.Fatalf("%s: endpoint lifetime %d %s, explain %s %s", where, res.ExpiresIn, res.IssuedTokenType, x.Lifetime, x.IssuedTokenType)
	}
	// The claims the token would carry are the token's, but for its jti.
	parts := strings.Split(res.AccessToken, ".")
	payload, derr := base64.RawURLEncoding.DecodeString(parts[1])
	var issued exchange.TokenClaims
	if derr != nil || json.Unmarshal(payload, &issued) != nil {
		t.Fatalf("%s: the issued token does not decode", where)
	}
	if issued.JTI == "" || x.Claims == nil || x.Claims.JTI != "" {
		t.Fatalf("%s: jti: issued %q, explained claims %+v", where, issued.JTI, x.Claims)
	}
	issued.JTI = ""
	if !reflect.DeepEqual(&issued, x.Claims) {
		t.Fatalf("%s: issued claims\n %+v\nexplained\n %+v", where, issued, *x.Claims)
	}
	if x.GrantID != issued.GrantID {
		t.Fatalf("%s: explain chose grant %q, the token names %q", where, x.GrantID, issued.GrantID)
	}
}

func sameDecision(t *testing.T, where string, want, got *exchange.Explanation) {
	t.Helper()
	if want.Decision != got.Decision {
		t.Fatalf("%s: %s, want %s (%v)", where, got.Decision, want.Decision, want.Refusal)
	}
	if want.Refusal != nil && (got.Refusal.Code != want.Refusal.Code || got.Refusal.Reason != want.Refusal.Reason) {
		t.Fatalf("%s: refused %s/%s, want %s/%s", where, got.Refusal.Code, got.Refusal.Reason, want.Refusal.Code, want.Refusal.Reason)
	}
	if !slices.Equal(want.Scopes, got.Scopes) || want.Lifetime != got.Lifetime || !reflect.DeepEqual(want.Claims, got.Claims) {
		t.Fatalf("%s: scopes %v lifetime %s, want %v %s", where, got.Scopes, got.Lifetime, want.Scopes, want.Lifetime)
	}
}

// ---------------------------------------------------------------------------------------------
// The generated worlds

var (
	genTenants   = []string{"acme", "acme", "acme", "globex"}
	genSubjects  = []string{"alice", "bob", "carol"}
	genAgents    = []string{"agent-1", "agent-2"}
	genModes     = []string{envelope.ModeOnBehalfOf, envelope.ModeServiceIdentity, envelope.ModeRestrictedUser}
	genAudiences = map[string][]string{"orders_api": {"orders:read", "orders:write"}, "billing_api": {"billing:read", "billing:write"}}
	genAllScopes = []string{"orders:read", "orders:write", "billing:read", "billing:write", "admin:all"}
	genClients   = []string{"mcp-a", "mcp-b"}
)

func pick[T any](r *mrand.Rand, s []T) T { return s[r.IntN(len(s))] }

// subset is a random subset of s, in s's order; nonEmpty keeps at least one member.
func subset(r *mrand.Rand, s []string, nonEmpty bool) []string {
	for {
		var out []string
		for _, v := range s {
			if r.IntN(2) == 0 {
				out = append(out, v)
			}
		}
		if len(out) > 0 || !nonEmpty {
			return out
		}
	}
}

func chance(r *mrand.Rand, percent int) bool { return r.IntN(100) < percent }

// populate registers the world's clients, audiences and grants.
func (a *agreement) populate(r *mrand.Rand, world int) {
	t, ctx := a.t, context.Background()
	created := a.now.Add(-48 * time.Hour)
	for _, id := range genClients {
		priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		a.keys[id] = priv
		pub, _ := jwk.Import(priv.Public())
		_ = pub.Set(jwk.KeyIDKey, id+"-k1")
		jwks, _ := json.Marshal(map[string]any{"keys": []jwk.Key{pub}})
		c := &storage.Client{ID: id, TokenEndpointAuthMethod: "client_secret_basic", JWKS: jwks,
			GrantTypes: []string{exchange.GrantTypeTokenExchange, exchange.GrantTypeClientCredentials},
			CreatedAt:  created, UpdatedAt: created}
		if chance(r, 4) {
			c.GrantTypes = []string{exchange.GrantTypeClientCredentials}
		}
		c.AllowedTenants = pick(r, [][]string{nil, nil, nil, nil, {"acme"}, {"acme"}, {"acme", "globex"}, {"globex"}})
		if chance(r, 30) {
			c.AllowedAudiences = pick(r, [][]string{{"orders_api"}, {"orders_api", "billing_api"}, {"billing_api"}})
		}
		if chance(r, 40) {
			c.AllowedScopes = subset(r, genAllScopes, false)
		}
		if chance(r, 25) {
			c.AllowedModes = subset(r, genModes, true)
		}
		c.ServiceActors = pick(r, [][]string{nil, nil, {"batch"}, {"batch", "alice"}})
		c.MaxTokenTTL = pick(r, []time.Duration{0, 0, 120 * time.Second, 30 * time.Second})
		c.MaxEnvelopeLifetime = pick(r, []time.Duration{0, 0, 600 * time.Second})
		c.Disabled = chance(r, 3)
		must(t, a.store.CreateClient(ctx, c))
		a.clients[id] = c
	}
	for _, id := range []string{"orders_api", "billing_api"} {
		host := strings.TrimSuffix(id, "_api")
		aud := &storage.Audience{ID: id, ResourceURIs: []string{"https://" + host + ".test"}, Scopes: genAudiences[id],
			TokenTTL: pick(r, []time.Duration{0, 0, 600 * time.Second, 45 * time.Second}), CreatedAt: created, UpdatedAt: created}
		if chance(r, 50) { // refusals for lack of a grant then tell the client to ask the user
			aud.UserConsent = storage.ConsentAllowed
		}
		if chance(r, 30) {
			aud.AllowedModes = subset(r, genModes, true)
			if chance(r, 60) && !slices.Contains(aud.AllowedModes, envelope.ModeOnBehalfOf) {
				aud.AllowedModes = append(aud.AllowedModes, envelope.ModeOnBehalfOf)
			}
		}
		must(t, a.store.CreateAudience(ctx, aud))
	}
	for i := range 2 + r.IntN(7) {
		g := &storage.Grant{ID: fmt.Sprintf("grt_w%02d_%02d", world, i), Tenant: pick(r, genTenants),
			Subject: pick(r, append([]string{storage.AnySubject}, genSubjects...)), ClientID: pick(r, genClients),
			Modes: []string{envelope.ModeOnBehalfOf}, CreatedAt: created}
		if chance(r, 25) {
			g.Modes = subset(r, genModes, true)
		}
		if chance(r, 40) {
			g.AgentID = pick(r, genAgents)
		}
		g.Audiences = subset(r, []string{"orders_api", "billing_api"}, true)
		// Mostly within what the client allows, or most exchanges stop before the grant.
		if gc := a.clients[g.ClientID]; chance(r, 80) {
			if len(gc.AllowedTenants) > 0 {
				g.Tenant = pick(r, gc.AllowedTenants)
			}
			if len(gc.AllowedAudiences) > 0 {
				g.Audiences = subset(r, gc.AllowedAudiences, true)
			}
		}
		var defined []string
		for _, aud := range g.Audiences {
			defined = append(defined, genAudiences[aud]...)
		}
		g.Scopes = subset(r, defined, true)
		g.NotBefore = a.now.Add(-time.Duration(1+r.IntN(3600)) * time.Second)
		g.ExpiresAt = a.now.Add(pick(r, []time.Duration{time.Hour, time.Hour, time.Hour, time.Hour, time.Hour, time.Hour,
			time.Hour, 90 * time.Second, 400 * time.Millisecond, -time.Minute}))
		if chance(r, 10) { // not valid yet
			g.NotBefore, g.ExpiresAt = a.now.Add(time.Hour), a.now.Add(2*time.Hour)
		}
		must(t, a.store.CreateGrant(ctx, g))
		a.grants = append(a.grants, g)
		if chance(r, 10) {
			if _, err := a.store.Store.RevokeGrant(ctx, g.ID, "admin", "generated", a.now.Add(-time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// randomInput makes one exchange of the world. Most are aimed at one of its grants (the
// client, tenant, user, agent, mode and audience it names), so that near misses and grants
// are common; the others, and a share of the aimed ones, break one thing or another.
func (a *agreement) randomInput(r *mrand.Rand, name string) *input {
	in := &input{name: name, client: pick(r, genClients)}
	c := envelope.Claims{
		Issuer: in.client, Audience: envelope.Audience{issuer}, JTI: fmt.Sprintf("jti-%d", r.Uint64()),
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: pick(r, genSubjects), Tenant: pick(r, genTenants)},
		Agent:         envelope.Agent{Type: envelope.AgentTypeMCP, ID: pick(r, genAgents), ClientID: in.client},
		Session:       envelope.Session{ID: "sess-1", TraceID: fmt.Sprintf("trace-%d", r.IntN(1000))},
		Authorization: envelope.Authorization{Scopes: subset(r, genAllScopes, false)},
		Delegation:    envelope.Delegation{Mode: pick(r, genModes)},
	}
	c.IssuedAt = a.now.Add(-time.Duration(r.IntN(30)) * time.Second)
	c.ExpiresAt = c.IssuedAt.Add(time.Minute)
	var aim *storage.Grant
	if chance(r, 70) {
		aim = pick(r, a.grants)
		in.client, c.Issuer, c.Agent.ClientID = aim.ClientID, aim.ClientID, aim.ClientID
		c.Actor = envelope.Actor{Type: envelope.ActorUser, Sub: aim.Subject, Tenant: aim.Tenant}
		if aim.Subject == storage.AnySubject {
			c.Actor.Sub = pick(r, genSubjects)
		}
		if aim.AgentID != "" {
			c.Agent.ID = aim.AgentID
		}
		c.Delegation.Mode = aim.Modes[0]
		if chance(r, 30) {
			c.Delegation.Mode = pick(r, aim.Modes)
		}
		c.Authorization.Scopes = append(slices.Clone(aim.Scopes), subset(r, genAllScopes, false)...)
	}
	noise := 100 // percent of the usual odds of breaking something
	if aim != nil {
		noise = 30
	}
	odds := func(percent int) bool { return r.IntN(10000) < percent*noise }
	switch n := r.IntN(10000); {
	case n < 4*noise: // expired
		c.IssuedAt, c.ExpiresAt = a.now.Add(-10*time.Minute), a.now.Add(-5*time.Minute)
	case n < 7*noise: // not yet valid
		c.NotBefore = a.now.Add(5 * time.Minute)
	case n < 10*noise: // longer than the client's maximum (unless it allows 600 s)
		c.ExpiresAt = c.IssuedAt.Add(500 * time.Second)
	case n < 12*noise:
		c.Audience = envelope.Audience{"https://elsewhere.example"}
	case n < 14*noise:
		c.JTI = ""
	case n < 16*noise:
		c.Issuer = pick(r, genClients)
	}
	if odds(15) {
		c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: pick(r, []string{"batch", "batch", "alice", "cron"}), Tenant: pick(r, genTenants)}
		if chance(r, 85) {
			c.Delegation.Mode = envelope.ModeServiceIdentity
		}
	}
	if odds(25) {
		c.Delegation.Allowed = pick(r, [][]string{{"orders_api"}, {"billing_api"}, {"orders_api", "billing_api"}})
	}
	if odds(20) {
		for range 1 + r.IntN(4) {
			c.Act = &envelope.Act{Sub: pick(r, []string{"planner", "router"}), Act: c.Act}
		}
	}
	in.claims, _ = json.Marshal(c)
	if odds(4) {
		in.signer = pick(r, genClients) // sometimes the other client's key: unknown kid
	}
	switch n := r.IntN(100); {
	case aim != nil && n < 70:
		in.audience = pick(r, aim.Audiences)
		if chance(r, 20) {
			in.audience, in.resource = "", "https://"+strings.TrimSuffix(in.audience, "_api")+".test"
		}
	case n < 55:
		in.audience = pick(r, []string{"orders_api", "billing_api"})
	case n < 75:
		in.resource = pick(r, []string{"https://orders.test", "https://billing.test"})
	case n < 85:
		in.audience, in.resource = "orders_api", "https://orders.test"
	case n < 90:
		in.audience, in.resource = "orders_api", "https://billing.test"
	case n < 94:
	default:
		in.audience = pick(r, []string{"nope_api", "https://orders.test"})
	}
	if chance(r, 50) {
		from := genAllScopes
		if aim != nil && chance(r, 70) {
			from = aim.Scopes
		}
		in.scopes = []string{pick(r, from)}
		if chance(r, 40) {
			in.scopes = append(in.scopes, pick(r, genAllScopes))
		}
	}
	return in
}

// agreementSeed fixes the generated set; AGREEMENT_SEED picks another to explore.
func agreementSeed(t *testing.T) uint64 {
	if s := os.Getenv("AGREEMENT_SEED"); s != "" {
		var v uint64
		if _, err := fmt.Sscan(s, &v); err != nil {
			t.Fatalf("AGREEMENT_SEED: %v", err)
		}
		return v
	}
	return 20260116
}

// TestExplainAgreesWithExchange: on a generated, seeded set of worlds (clients, audiences,
// grants in every state, clocks) and exchanges (valid and broken envelopes, user and service
// actors, every mode, targets, scopes, replays), Explain and the endpoint decide alike —
// decision, error code, reason and description, scopes, lifetime, the token's claims — and
// Explain writes nothing. Each input is also asked as a what-if (unsigned claims), which
// must agree wherever the signature is not the question.
func TestExplainAgreesWithExchange(t *testing.T) {
	for _, b := range agreementBackends() {
		t.Run(b.name, func(t *testing.T) {
			seed := agreementSeed(t)
			r := mrand.New(mrand.NewPCG(seed, 1))
			const worlds, inputs = 16, 25
			total, granted, consent := 0, 0, 0
			reasons := map[string]int{}
			for w := range worlds {
				// A fixed epoch (2030-01-01), not the wall clock: the seed alone fixes every
				// world, down to the sub-second edges of grants about to expire.
				now := time.Unix(1893456000, 0).Add(time.Duration(r.IntN(3600))*time.Second +
					time.Duration(r.IntN(1e9))).UTC()
				a := newAgreement(t, b.open(t), now)
				a.populate(r, w)
				var used []*input
				for i := range inputs {
					name := fmt.Sprintf("seed %d world %d input %d", seed, w, i)
					in := a.randomInput(r, name)
					if len(used) > 0 && chance(r, 10) { // a replay of a granted envelope
						prev := *pick(r, used)
						prev.name = name + " (replay of " + prev.name + ")"
						in = &prev
					}
					ok, mayConsent := a.check(in, chance(r, 50))
					if ok {
						granted++
						used = append(used, in)
					}
					if mayConsent {
						consent++
					}
					total++
				}
				for _, rec := range auditReasons(t, a.store) {
					reasons[rec]++
				}
			}
			t.Logf("%d inputs (each also as a what-if): %d granted, %d refused naming the grant request endpoint; reasons %v",
				total, granted, consent, reasons)
			if consent == 0 {
				t.Errorf("no refusal said the user may consent")
			}
			// The generator must reach the decisions it is meant to compare.
			for _, want := range []string{exchange.ReasonGranted, exchange.ReasonNoActiveGrant, exchange.ReasonGrantNotCovering,
				exchange.ReasonScopeNotAllowed, exchange.ReasonNoScope, exchange.ReasonReplay, exchange.ReasonTenantNotAllowed,
				exchange.ReasonAudienceNotForClient, exchange.ReasonModeNotForAudience, exchange.ReasonServiceActorNotAllowed,
				exchange.ReasonUnknownAudience, exchange.ReasonConflictingTargets, "envelope_expired", "envelope_unknown_kid"} {
				if reasons[want] == 0 && seed == 20260116 {
					t.Errorf("the generated set never reached %s", want)
				}
			}
		})
	}
}

// auditReasons lists the reasons of the endpoint's records in the store.
func auditReasons(t *testing.T, s storage.Store) []string {
	t.Helper()
	var out []string
	page := storage.Page{Limit: storage.MaxPageLimit}
	for {
		items, next, err := s.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange, Page: page})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			out = append(out, it.Reason)
		}
		if next == "" {
			return out
		}
		page.Cursor = next
	}
}

type agreementBackend struct {
	name string
	open func(t *testing.T) storage.Store
}

func agreementBackends() []agreementBackend {
	bs := []agreementBackend{{"sqlite", func(t *testing.T) storage.Store {
		s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), fmt.Sprintf("m%d.db", time.Now().UnixNano())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}}}
	if os.Getenv(pgtest.EnvURL) != "" {
		bs = append(bs, agreementBackend{"postgres", func(t *testing.T) storage.Store { return pgtest.Open(t) }})
	}
	return bs
}

// ---------------------------------------------------------------------------------------------
// What an explanation says

func explainOf(t *testing.T, f *fixture, xr exchange.ExplainRequest) *exchange.Explanation {
	t.Helper()
	f.store.take()
	x, err := f.svc.Explain(context.Background(), xr)
	if err != nil {
		t.Fatal(err)
	}
	for _, call := range f.store.take() {
		if call == "RecordIssuance" || call == "AppendAudit" || call == "InTx" {
			t.Fatalf("Explain called %s", call)
		}
	}
	return x
}

func stepOf(t *testing.T, x *exchange.Explanation, name string) exchange.StepReport {
	t.Helper()
	for _, s := range x.Steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no step %s", name)
	return exchange.StepReport{}
}

func grantReport(t *testing.T, x *exchange.Explanation, id string) exchange.GrantReport {
	t.Helper()
	for _, g := range x.Grants {
		if g.Grant.ID == id {
			return g
		}
	}
	t.Fatalf("grant %s not reported; grants: %+v", id, x.Grants)
	return exchange.GrantReport{}
}

func wantWhy(t *testing.T, g exchange.GrantReport, fragment string) {
	t.Helper()
	if !slices.ContainsFunc(g.Why, func(w string) bool { return strings.Contains(w, fragment) }) {
		t.Errorf("grant %s: why %q, want it to say %q", g.Grant.ID, g.Why, fragment)
	}
}

// A granted explanation: every step passed, the grant chosen, the scopes, the lifetime and
// the claims the token would carry.
func TestExplainGranted(t *testing.T) {
	f := newFixture(t)
	x := explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: f.envelope(t, nil), Resource: "https://orders"})
	if x.Decision != exchange.DecisionGranted || x.Audience != "orders_api" || x.GrantID != f.grantID || x.WhatIf {
		t.Fatalf("explanation %+v", x)
	}
	for _, s := range x.Steps {
		if s.Outcome != exchange.OutcomePassed || s.Detail == "" {
			t.Errorf("step %s: %s %q", s.Name, s.Outcome, s.Detail)
		}
	}
	if !slices.Equal(x.EffectiveScopes, []string{"orders:read"}) || !slices.Equal(x.Scopes, []string{"orders:read"}) ||
		x.Lifetime != 300*time.Second || x.IssuedTokenType != exchange.TokenTypeAccessToken {
		t.Errorf("scopes %v %v lifetime %s type %s", x.EffectiveScopes, x.Scopes, x.Lifetime, x.IssuedTokenType)
	}
	c := x.Claims
	if c == nil || c.Subject != "u1" || c.Audience != "orders_api" || c.Act == nil || c.Act.Sub != "agent" ||
		c.Act.ClientID != "mcp" || c.GrantID != f.grantID || c.JTI != "" || c.ExpiresAt-c.IssuedAt != 300 {
		t.Errorf("claims %+v", c)
	}
	if g := grantReport(t, x, f.grantID); !g.InForce || !g.Matched || !g.Chosen {
		t.Errorf("the grant: %+v", g)
	}
	if d := stepOf(t, x, exchange.StepLifetime).Detail; d != "min(default token TTL 300 s, grant "+f.grantID+" ends in 3600 s) = 300 s" &&
		d != "min(default token TTL 300 s, grant "+f.grantID+" ends in 3599 s) = 300 s" {
		t.Errorf("lifetime detail %q", d)
	}
	if d := stepOf(t, x, exchange.StepIssuance).Detail; !strings.Contains(d, "has not been used for audience orders_api") {
		t.Errorf("issuance detail %q", d)
	}
	// Nothing was used up: the same envelope is still granted by the endpoint.
}

// Every grant for the tenant, user (or *) and client is reported with why it was or was not
// used: revoked, expired, not yet valid, another agent, another audience, another mode,
// scopes that do not fit; and the one chosen.
func TestExplainGrantReports(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	add := func(id string, edit func(g *storage.Grant)) string {
		g := &storage.Grant{ID: id, Tenant: "acme", Subject: "u1", ClientID: "mcp", Audiences: []string{"orders_api"},
			Scopes: []string{"orders:read"}, Modes: []string{envelope.ModeOnBehalfOf},
			NotBefore: now.Add(-time.Minute), ExpiresAt: now.Add(2 * time.Hour), CreatedAt: now}
		edit(g)
		must(t, f.store.CreateGrant(ctx, g))
		return id
	}
	revoked := add("grt_revoked", func(*storage.Grant) {})
	if _, err := f.store.RevokeGrant(ctx, revoked, "admin-cli", "left the company", now); err != nil {
		t.Fatal(err)
	}
	expired := add("grt_expired", func(g *storage.Grant) { g.NotBefore, g.ExpiresAt = now.Add(-2*time.Hour), now.Add(-time.Hour) })
	later := add("grt_later", func(g *storage.Grant) { g.NotBefore = now.Add(time.Hour) })
	agent := add("grt_agent", func(g *storage.Grant) { g.AgentID = "other-agent" })
	billing := add("grt_billing", func(g *storage.Grant) { g.Audiences, g.Scopes = []string{"billing_api"}, []string{"billing:read"} })
	restricted := add("grt_restricted", func(g *storage.Grant) { g.Modes = []string{envelope.ModeRestrictedUser} })
	write := add("grt_write", func(g *storage.Grant) { g.Scopes = []string{"orders:write"} })
	longer := add("grt_longer", func(*storage.Grant) {}) // expires an hour after the fixture's: preferred
	other := add("grt_other_user", func(g *storage.Grant) { g.Subject = "u2" })

	x := explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: f.envelope(t, nil), Audience: "orders_api"})
	if x.Decision != exchange.DecisionGranted || x.GrantID != longer {
		t.Fatalf("decision %s under %q, want granted under %s", x.Decision, x.GrantID, longer)
	}
	for id, why := range map[string]string{
		revoked: "revoked at", expired: "expired at", later: "not valid before", agent: "only for agent other-agent",
	} {
		g := grantReport(t, x, id)
		if g.InForce || g.Matched {
			t.Errorf("%s: in force %v matched %v", id, g.InForce, g.Matched)
		}
		wantWhy(t, g, why)
	}
	wantWhy(t, grantReport(t, x, revoked), "by admin-cli: left the company")
	for id, why := range map[string]string{
		billing:    "audience: orders_api is not among the grant's audiences [billing_api]",
		restricted: "mode: on_behalf_of is not among the grant's modes [restricted_user]",
		write:      "scopes: no effective scope", f.grantID: "was preferred",
	} {
		g := grantReport(t, x, id)
		if !g.InForce || g.Chosen {
			t.Errorf("%s: in force %v chosen %v", id, g.InForce, g.Chosen)
		}
		wantWhy(t, g, why)
	}
	if g := grantReport(t, x, longer); !g.Chosen || !g.Matched {
		t.Errorf("chosen grant %+v", g)
	}
	for _, g := range x.Grants {
		if g.Grant.ID == other {
			t.Errorf("a grant for another user was reported")
		}
	}
	if d := stepOf(t, x, exchange.StepGrant).Detail; !strings.Contains(d, "5 grant(s) in force") || !strings.Contains(d, "3 cover audience orders_api") {
		t.Errorf("grant step detail %q", d)
	}

	// Asking for a scope the client does not allow: refused at the scopes step, and each
	// covering grant says what it lacks.
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: f.envelope(t, nil), Audience: "orders_api",
		Scopes: []string{"orders:write"}})
	if x.Refusal == nil || x.Refusal.Reason != exchange.ReasonScopeNotAllowed || stepOf(t, x, exchange.StepScopes).Outcome != exchange.OutcomeRefused {
		t.Fatalf("refusal %+v", x.Refusal)
	}
	wantWhy(t, grantReport(t, x, longer), "requested [orders:write] not in the effective scopes [orders:read]")
	for _, name := range []string{exchange.StepLifetime, exchange.StepIssuance} {
		if s := stepOf(t, x, name); s.Outcome != exchange.OutcomeSkipped || !strings.Contains(s.Detail, "refused at step scopes") {
			t.Errorf("step %s after the refusal: %s %q", name, s.Outcome, s.Detail)
		}
	}
}

// A what-if question: claims instead of a signed envelope. The signature step is skipped,
// everything else runs; at moves the clock for the envelope and the grants.
func TestExplainWhatIfAndAt(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	claims := func(at time.Time, edit func(c *envelope.Claims)) []byte {
		c := envelope.Claims{Issuer: "mcp", Audience: envelope.Audience{issuer}, IssuedAt: at, ExpiresAt: at.Add(time.Minute),
			JTI: "what-if-1", Actor: envelope.Actor{Type: envelope.ActorUser, Sub: "alice", Tenant: "acme"},
			Agent: envelope.Agent{ID: "agent", ClientID: "mcp"}, Session: envelope.Session{ID: "s1"},
			Authorization: envelope.Authorization{Scopes: []string{"orders:read"}},
			Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf}}
		if edit != nil {
			edit(&c)
		}
		b, _ := json.Marshal(c)
		return b
	}
	x := explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", Claims: claims(now, nil), Audience: "orders_api"})
	if x.Decision != exchange.DecisionGranted || !x.WhatIf || stepOf(t, x, exchange.StepSignature).Outcome != exchange.OutcomeSkipped {
		t.Fatalf("what-if: %s, signature %s", x.Decision, stepOf(t, x, exchange.StepSignature).Outcome)
	}
	if x.Envelope == nil || x.Envelope.Actor.Sub != "alice" || x.Claims.Subject != "alice" {
		t.Errorf("envelope %+v claims %+v", x.Envelope, x.Claims)
	}
	if d := stepOf(t, x, exchange.StepSignature).Detail; strings.Contains(d, "no usable keys") {
		t.Errorf("signature detail %q for a client with keys", d)
	}
	// A client without keys: the what-if still skips the signature, and says no envelope of
	// it can verify.
	must(t, f.store.CreateClient(context.Background(), &storage.Client{ID: "keyless",
		GrantTypes: []string{exchange.GrantTypeTokenExchange}, CreatedAt: now, UpdatedAt: now}))
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "keyless", Audience: "orders_api",
		Claims: claims(now, func(c *envelope.Claims) { c.Issuer, c.Agent.ClientID = "keyless", "keyless" })})
	if s := stepOf(t, x, exchange.StepSignature); s.Outcome != exchange.OutcomeSkipped || !strings.Contains(s.Detail, "client_keys_invalid") {
		t.Errorf("keyless what-if signature step %+v", s)
	}
	// Claims are checked as the verifier checks a signed envelope's.
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", Claims: claims(now, func(c *envelope.Claims) { c.Actor.Sub = "*" }),
		Audience: "orders_api"})
	if x.Refusal == nil || x.Refusal.Reason != "envelope_bad_value" || stepOf(t, x, exchange.StepEnvelope).Outcome != exchange.OutcomeRefused {
		t.Fatalf("actor * : %+v", x.Refusal)
	}
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", Claims: []byte(`{"iat": "yesterday"}`), Audience: "orders_api"})
	if x.Refusal == nil || x.Refusal.Reason != "envelope_bad_format" {
		t.Fatalf("claims of the wrong types: %+v", x.Refusal)
	}

	// Two hours on, the grant has expired: no grant in force, and the report says so.
	later := now.Add(2 * time.Hour)
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", Claims: claims(later, nil), Audience: "orders_api", At: later})
	if x.Refusal == nil || x.Refusal.Reason != exchange.ReasonNoActiveGrant || !x.At.Equal(later) || x.Refusal.UserMayConsent ||
		strings.Contains(stepOf(t, x, exchange.StepGrant).Detail, "grant request endpoint") {
		t.Fatalf("at +2h: %+v", x.Refusal)
	}
	// Where users may grant access themselves, the refusal says so.
	if _, err := f.store.UpdateAudience(context.Background(), "orders_api", func(a *storage.Audience) error {
		a.UserConsent = storage.ConsentAllowed
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", Claims: claims(later, nil), Audience: "orders_api", At: later})
	if x.Refusal == nil || !x.Refusal.UserMayConsent || !strings.Contains(stepOf(t, x, exchange.StepGrant).Detail, "grant request endpoint") {
		t.Fatalf("at +2h, user consent allowed: %+v %q", x.Refusal, stepOf(t, x, exchange.StepGrant).Detail)
	}
	wantWhy(t, grantReport(t, x, f.grantID), "expired at")
	// A signed envelope made now has expired by then.
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: f.envelope(t, nil), Audience: "orders_api", At: later})
	if x.Refusal == nil || x.Refusal.Reason != "envelope_expired" || stepOf(t, x, exchange.StepSignature).Outcome != exchange.OutcomePassed {
		t.Fatalf("signed envelope at +2h: %+v", x.Refusal)
	}
	// Five minutes before the grant starts (a minute before now), it is not valid yet.
	early := now.Add(-5 * time.Minute)
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", Claims: claims(early, nil), Audience: "orders_api", At: early})
	wantWhy(t, grantReport(t, x, f.grantID), "not valid before")
}

// The client named is the first step: unknown and disabled clients fail the authentication
// the endpoint would make, and nothing after it runs.
func TestExplainClient(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tok := f.envelope(t, nil)
	x := explainOf(t, f, exchange.ExplainRequest{ClientID: "nobody", SubjectToken: tok, Audience: "orders_api"})
	if x.Refusal == nil || x.Refusal.Code != "invalid_client" || x.Refusal.Reason != "client_authentication_failed" ||
		stepOf(t, x, exchange.StepClient).Outcome != exchange.OutcomeRefused || stepOf(t, x, exchange.StepIssuance).Outcome != exchange.OutcomeSkipped {
		t.Fatalf("unknown client: %+v", x.Refusal)
	}
	if _, err := f.store.UpdateClient(ctx, "mcp", func(c *storage.Client) error { c.Disabled = true; return nil }); err != nil {
		t.Fatal(err)
	}
	// Explain reads the store, not the endpoint's cache.
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: tok, Audience: "orders_api"})
	if x.Refusal == nil || x.Refusal.Reason != "client_authentication_failed" ||
		!strings.Contains(stepOf(t, x, exchange.StepClient).Detail, "is disabled") {
		t.Fatalf("disabled client: %+v", x.Refusal)
	}
}

// An envelope already exchanged for an audience: the issuance step reports it (a read), for
// that audience only.
func TestExplainReplay(t *testing.T) {
	f := newFixture(t)
	tok := f.envelope(t, nil)
	if _, err := f.svc.Exchange(context.Background(), f.request(tok, "orders_api")); err != nil {
		t.Fatal(err)
	}
	x := explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: tok, Audience: "orders_api"})
	if x.Refusal == nil || x.Refusal.Reason != exchange.ReasonReplay || !x.Replayed ||
		stepOf(t, x, exchange.StepIssuance).Outcome != exchange.OutcomeRefused {
		t.Fatalf("replayed envelope: %+v", x.Refusal)
	}
	if d := stepOf(t, x, exchange.StepIssuance).Detail; !strings.Contains(d, "already issued") {
		t.Errorf("issuance detail %q", d)
	}
}

// The lifetime step: a grant about to end leaves no whole second for a token (refused, as
// the endpoint refuses), and the client's maximum narrows the audience's TTL.
func TestExplainLifetime(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// On a fixed clock 100 ms into a second, a grant ending 900 ms into it is in force but
	// leaves the token (iat in whole seconds) less than a second.
	now := time.Now().Truncate(time.Second).Add(100 * time.Millisecond)
	clock := func() time.Time { return now }
	svc, err := exchange.New(exchange.Deps{Store: f.store, Verifier: &envelope.Verifier{Issuer: issuer, Now: clock},
		Signer: f.keys, Now: clock}, exchange.Config{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	must(t, f.store.CreateGrant(ctx, &storage.Grant{ID: "grt_ending", Tenant: "initech", Subject: "u9", ClientID: "mcp",
		Audiences: []string{"orders_api"}, Scopes: []string{"orders:read"}, NotBefore: now.Add(-time.Hour),
		ExpiresAt: now.Add(800 * time.Millisecond), CreatedAt: now}))
	tok := f.envelope(t, func(c *envelope.Claims) { c.Actor.Sub, c.Actor.Tenant, c.IssuedAt = "u9", "initech", now })
	x, err := svc.Explain(ctx, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: tok, Audience: "orders_api"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.Exchange(ctx, f.request(tok, "orders_api"))
	e := exchange.AsError(err)
	if e == nil || e.Reason != exchange.ReasonGrantExpiring || x.Refusal == nil || x.Refusal.Reason != e.Reason ||
		stepOf(t, x, exchange.StepLifetime).Outcome != exchange.OutcomeRefused {
		t.Fatalf("endpoint %v, explain %+v", err, x.Refusal)
	}

	if _, err := f.store.UpdateClient(ctx, "mcp", func(c *storage.Client) error { c.MaxTokenTTL = 30 * time.Second; return nil }); err != nil {
		t.Fatal(err)
	}
	x = explainOf(t, f, exchange.ExplainRequest{ClientID: "mcp", SubjectToken: f.envelope(t, nil), Audience: "orders_api"})
	if d := stepOf(t, x, exchange.StepLifetime).Detail; x.Lifetime != 30*time.Second || !strings.Contains(d, "client max_token_ttl 30 s") {
		t.Errorf("lifetime %s, detail %q", x.Lifetime, d)
	}
}
