package boundary

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/mandatehq/mandate/envelope"
)

// DelegatorConfig configures a Delegator.
type DelegatorConfig struct {
	// Issuer is Mandate's issuer URL: the envelopes' aud. Required.
	Issuer string
	// TokenURL defaults to Issuer + "/oauth2/token".
	TokenURL string
	// ClientID is this MCP server's client_id at Mandate. Required.
	ClientID string
	// ClientSecret selects client_secret_basic.
	ClientSecret string
	// AssertionKey (with AssertionKeyID) selects private_key_jwt (RFC 7523): an ECDSA
	// P-256 or Ed25519 key whose public half is in the client's registered JWKS.
	AssertionKey   crypto.Signer
	AssertionKeyID string
	// Signer signs the envelopes. Required.
	Signer *envelope.Signer
	// EnvelopeLifetime defaults to 60 s.
	EnvelopeLifetime time.Duration
	// Allowed is the envelope's delegation.allowed (empty: any audience the grant covers).
	Allowed []string
	// RefreshBefore is how long before expiry a cached token stops being used; default
	// 30 s, at most a fifth of the token's lifetime.
	RefreshBefore time.Duration
	// MaxCacheEntries bounds the cache; default 10000.
	MaxCacheEntries int
	// HTTPClient talks to Mandate; default a client with a 10 s timeout.
	HTTPClient *http.Client
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Delegator exchanges identities for Mandate access tokens, one per downstream audience,
// and caches each until shortly before it expires, per (tenant, user, agent, audience,
// requested scopes, mode, the identity's scopes). Concurrent requests for the same key
// share one exchange.
type Delegator struct {
	cfg   DelegatorConfig
	group singleflight.Group

	mu        sync.Mutex
	cache     map[string]cachedToken
	exchanges int
}

type cachedToken struct {
	token     string
	expiresAt time.Time // when the token expires
	useUntil  time.Time // when the cache stops handing it out
}

// ExchangeError is Mandate refusing an exchange (RFC 6749 §5.2). Its message is fit for a
// tool error: it says which audience and why, in Mandate's words.
type ExchangeError struct {
	Audience    string
	Status      int
	Code        string
	Reason      string // Mandate's stable reason code (testdata/reasons.json)
	Description string
	// GrantRequestEndpoint is set when the user could lift the refusal by granting access
	// (SPEC §11): RequestGrant asks them there.
	GrantRequestEndpoint string
}

func (e *ExchangeError) Error() string {
	msg := fmt.Sprintf("Mandate refused a token for %s: %s", e.Audience, e.Code)
	if e.Description != "" {
		msg += " (" + e.Description + ")"
	}
	return msg
}

// ErrNoIdentity means a downstream call was made outside a request that passed the
// boundary.
var ErrNoIdentity = errors.New("boundary: no identity in the context: the call did not come through the boundary")

// NewDelegator returns a Delegator.
func NewDelegator(cfg DelegatorConfig) (*Delegator, error) {
	if cfg.Issuer == "" || cfg.ClientID == "" || cfg.Signer == nil {
		return nil, errors.New("boundary: Issuer, ClientID and Signer are required")
	}
	if (cfg.ClientSecret == "") == (cfg.AssertionKey == nil) {
		return nil, errors.New("boundary: set exactly one of ClientSecret and AssertionKey")
	}
	if cfg.AssertionKey != nil {
		if _, err := assertionAlg(cfg.AssertionKey); err != nil {
			return nil, err
		}
		if cfg.AssertionKeyID == "" {
			return nil, errors.New("boundary: AssertionKeyID is required with AssertionKey")
		}
	}
	if cfg.TokenURL == "" {
		cfg.TokenURL = cfg.Issuer + "/oauth2/token"
	}
	if cfg.EnvelopeLifetime <= 0 {
		cfg.EnvelopeLifetime = envelope.DefaultSignLifetime
	}
	if cfg.RefreshBefore <= 0 {
		cfg.RefreshBefore = 30 * time.Second
	}
	if cfg.MaxCacheEntries <= 0 {
		cfg.MaxCacheEntries = 10000
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Delegator{cfg: cfg, cache: make(map[string]cachedToken)}, nil
}

// Exchanges reports how many exchanges the Delegator has sent to Mandate.
func (d *Delegator) Exchanges() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exchanges
}

func cacheKey(id *Identity, audience string, scopes []string) string {
	set := func(l []string) []string {
		s := slices.Clone(l)
		slices.Sort(s)
		return slices.Compact(s)
	}
	// The identity's scopes are the envelope's, which bound what Mandate issues: a token
	// exchanged for a broader inbound token must not serve a narrower one. JSON keeps the
	// parts apart whatever characters they contain.
	b, _ := json.Marshal([]any{id.Actor.Type, id.Actor.Tenant, id.Actor.Sub, id.Agent.ID, id.Mode, audience, set(scopes), set(id.Scopes)})
	return string(b)
}

// Token returns an access token for audience, acting for id, with the requested scopes
// (none: whatever Mandate's policy makes effective). A cached token is returned while it
// is more than RefreshBefore from expiry.
func (d *Delegator) Token(ctx context.Context, id *Identity, audience string, scopes ...string) (string, error) {
	if id == nil {
		return "", ErrNoIdentity
	}
	if !id.ExpiresAt.IsZero() && !d.cfg.Now().Before(id.ExpiresAt) {
		return "", errors.New("boundary: the user's token has expired")
	}
	key := cacheKey(id, audience, scopes)
	d.mu.Lock()
	c, ok := d.cache[key]
	d.mu.Unlock()
	if ok && d.cfg.Now().Before(c.useUntil) {
		return c.token, nil
	}
	v, err, _ := d.group.Do(key, func() (any, error) {
		// Another caller may have filled the cache while this one waited for the lock.
		d.mu.Lock()
		c, ok := d.cache[key]
		d.mu.Unlock()
		if ok && d.cfg.Now().Before(c.useUntil) {
			return c.token, nil
		}
		// The exchange must not die with the first caller's context: others share it.
		ctx := context.WithoutCancel(ctx)
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		tok, err := d.exchange(ctx, id, audience, scopes)
		if err != nil {
			return nil, err
		}
		d.store(key, tok)
		return tok.token, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// Forget drops the cached token for (id, audience, scopes), for example after the
// downstream API refused it.
func (d *Delegator) Forget(id *Identity, audience string, scopes ...string) {
	d.mu.Lock()
	delete(d.cache, cacheKey(id, audience, scopes))
	d.mu.Unlock()
}

func (d *Delegator) store(key string, t cachedToken) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.cache) >= d.cfg.MaxCacheEntries {
		now := d.cfg.Now()
		for k, v := range d.cache {
			if !now.Before(v.useUntil) {
				delete(d.cache, k)
			}
		}
		// Still full: drop arbitrary entries (map order) rather than grow without bound.
		for k := range d.cache {
			if len(d.cache) < d.cfg.MaxCacheEntries {
				break
			}
			delete(d.cache, k)
		}
	}
	d.cache[key] = t
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
	Reason      string `json:"reason"`
	GrantReqURL string `json:"grant_request_endpoint"`
}

const maxTokenResponseBytes = 64 << 10

func (d *Delegator) exchange(ctx context.Context, id *Identity, audience string, scopes []string) (cachedToken, error) {
	now := d.cfg.Now()
	envExp := now.Add(d.cfg.EnvelopeLifetime)
	if !id.ExpiresAt.IsZero() && id.ExpiresAt.Before(envExp) {
		envExp = id.ExpiresAt // the envelope never outlives the user's proof
	}
	env, err := d.cfg.Signer.Sign(envelope.Claims{
		Issuer:        d.cfg.ClientID,
		Audience:      envelope.Audience{d.cfg.Issuer},
		IssuedAt:      now,
		ExpiresAt:     envExp,
		Actor:         id.Actor,
		Agent:         envelope.Agent{Type: id.Agent.Type, ID: id.Agent.ID, ClientID: d.cfg.ClientID},
		Session:       id.Session,
		Authorization: envelope.Authorization{Scopes: id.Scopes, Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: id.Mode, Allowed: d.cfg.Allowed},
	})
	if err != nil {
		return cachedToken{}, fmt.Errorf("boundary: sign envelope: %w", err)
	}
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {env},
		"subject_token_type": {envelope.TokenType},
		"audience":           {audience},
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.cfg.TokenURL, nil)
	if err != nil {
		return cachedToken{}, err
	}
	if d.cfg.AssertionKey != nil {
		a, err := d.assertion(now)
		if err != nil {
			return cachedToken{}, err
		}
		form.Set("client_id", d.cfg.ClientID)
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", a)
	} else {
		req.SetBasicAuth(url.QueryEscape(d.cfg.ClientID), url.QueryEscape(d.cfg.ClientSecret))
	}
	body := form.Encode()
	req.Body = io.NopCloser(strings.NewReader(body))
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	d.mu.Lock()
	d.exchanges++
	d.mu.Unlock()
	resp, err := d.cfg.HTTPClient.Do(req)
	if err != nil {
		return cachedToken{}, fmt.Errorf("boundary: token exchange for %s: %w", audience, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponseBytes))
	if err != nil {
		return cachedToken{}, fmt.Errorf("boundary: token exchange for %s: %w", audience, err)
	}
	var tr tokenResponse
	jsonErr := json.Unmarshal(raw, &tr)
	if resp.StatusCode != http.StatusOK {
		if jsonErr != nil || tr.Error == "" {
			return cachedToken{}, &ExchangeError{Audience: audience, Status: resp.StatusCode, Code: "server_error", Description: fmt.Sprintf("HTTP %d", resp.StatusCode)}
		}
		return cachedToken{}, &ExchangeError{Audience: audience, Status: resp.StatusCode, Code: tr.Error,
			Reason: tr.Reason, Description: tr.Description, GrantRequestEndpoint: tr.GrantReqURL}
	}
	if jsonErr != nil || tr.AccessToken == "" || tr.ExpiresIn <= 0 || !strings.EqualFold(tr.TokenType, "Bearer") {
		return cachedToken{}, fmt.Errorf("boundary: token exchange for %s: malformed answer", audience)
	}
	life := time.Duration(tr.ExpiresIn) * time.Second
	exp := now.Add(life)
	margin := min(d.cfg.RefreshBefore, life/5)
	return cachedToken{token: tr.AccessToken, expiresAt: exp, useUntil: exp.Add(-margin)}, nil
}

// assertion is an RFC 7523 client assertion: iss = sub = client_id, aud = the token
// endpoint, a short exp and a fresh jti (Mandate accepts each jti once).
func (d *Delegator) assertion(now time.Time) (string, error) {
	alg, _ := assertionAlg(d.cfg.AssertionKey)
	header, _ := json.Marshal(map[string]string{"alg": alg, "typ": "JWT", "kid": d.cfg.AssertionKeyID})
	claims, _ := json.Marshal(map[string]any{
		"iss": d.cfg.ClientID, "sub": d.cfg.ClientID, "aud": d.cfg.TokenURL,
		"iat": now.Unix(), "exp": now.Add(60 * time.Second).Unix(), "jti": randomHex(16),
	})
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	var sig []byte
	switch k := d.cfg.AssertionKey.(type) {
	case *ecdsa.PrivateKey:
		h := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
		if err != nil {
			return "", err
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func assertionAlg(k crypto.Signer) (string, error) {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve.Params().Name == "P-256" {
			return "ES256", nil
		}
	case ed25519.PrivateKey:
		return "EdDSA", nil
	}
	return "", errors.New("boundary: AssertionKey must be an ECDSA P-256 or Ed25519 private key")
}
