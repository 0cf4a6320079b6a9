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
	"strconv"
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
	// Audiences are the base URLs of each downstream API, by audience id: scheme, host,
	// port and a path prefix ("https://orders.example.com/api"). Client and Transport send
	// an audience's token only to URLs under one of its base URLs (same scheme, host and
	// port; the path on a segment boundary), refuse every other URL before sending anything,
	// and do not follow a redirect out of them. https only, except on loopback hosts. An
	// audience without base URLs gets no token sent anywhere; Token itself is unaffected.
	Audiences map[string][]string
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
	bases map[string][]*url.URL // Audiences, parsed

	mu        sync.Mutex
	cache     map[string]cachedToken
	exchanges int
}

type cachedToken struct {
	token     string
	expiresAt time.Time // when the token expires
	useUntil  time.Time // when the cache stops handing it out
}

// ExchangeError is an exchange that did not give a token: Mandate refused it (RFC 6749 §5.2,
// with Mandate's reason), or could not be reached. Its message is fit for a tool error: it
// says which audience and why, in Mandate's words. Kind says what to do about it, and
// errors.Is matches it against ErrGrantRequired, ErrClientError and ErrUnavailable.
type ExchangeError struct {
	Audience string
	// Status is the HTTP status of Mandate's answer; 0 when none came.
	Status int
	// Code is the OAuth error code ("invalid_request", …); "" when no answer came.
	Code string
	// Reason is Mandate's stable reason code ("no_active_grant", …; testdata/reasons.json).
	Reason      string
	Description string
	// RetryAfter is Mandate's Retry-After (on 429 and 503 answers); 0 when it sent none.
	RetryAfter time.Duration
	// GrantRequestEndpoint is set when the user could lift the refusal by granting access
	// (SPEC §11): RequestGrant asks them there.
	GrantRequestEndpoint string

	err error // the network failure, when no answer came
}

// What to do about an ExchangeError (sdk-contract §1).
const (
	// KindGrantRequired: the user (or an admin) has not granted it; ask them, then retry.
	KindGrantRequired = "grant_required"
	// KindClientError: the request or the configuration is wrong; retrying as is fails again.
	KindClientError = "client_error"
	// KindUnavailable: retry later, after RetryAfter when it is set.
	KindUnavailable = "unavailable"
)

// Sentinels for errors.Is, one per kind.
var (
	ErrGrantRequired = errors.New("boundary: the user has not granted this delegation")
	ErrClientError   = errors.New("boundary: the exchange request or the client's configuration is wrong")
	ErrUnavailable   = errors.New("boundary: Mandate is unavailable; retry later")
)

func (e *ExchangeError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("Mandate could not be reached for a token for %s: %v", e.Audience, e.err)
	}
	msg := fmt.Sprintf("Mandate refused a token for %s: %s", e.Audience, e.Code)
	if e.Description != "" {
		msg += " (" + e.Description + ")"
	}
	return msg
}

// Kind is KindGrantRequired, KindClientError or KindUnavailable: the kind of Reason in
// testdata/reasons.json; without a reason the SDK knows, a network failure, 429 or 5xx is
// unavailable and anything else a client error.
func (e *ExchangeError) Kind() string {
	if k, ok := reasonKinds[e.Reason]; ok {
		return k
	}
	if e.Status == 0 || e.Status == http.StatusTooManyRequests || e.Status >= 500 {
		return KindUnavailable
	}
	return KindClientError
}

// Is makes errors.Is(err, ErrGrantRequired|ErrClientError|ErrUnavailable) test the kind.
func (e *ExchangeError) Is(target error) bool {
	switch target {
	case ErrGrantRequired:
		return e.Kind() == KindGrantRequired
	case ErrClientError:
		return e.Kind() == KindClientError
	case ErrUnavailable:
		return e.Kind() == KindUnavailable
	}
	return false
}

// Unwrap is the network failure, when no answer came.
func (e *ExchangeError) Unwrap() error { return e.err }

// reasonKinds is testdata/reasons.json's kind of every reason (a test keeps them equal).
var reasonKinds = map[string]string{
	"client_authentication_failed":            KindClientError,
	"rate_limited":                            KindUnavailable,
	"malformed_request":                       KindClientError,
	"request_too_large":                       KindClientError,
	"unsupported_grant_type":                  KindClientError,
	"grant_type_not_allowed":                  KindClientError,
	"missing_subject_token":                   KindClientError,
	"bad_subject_token_type":                  KindClientError,
	"subject_token_too_large":                 KindClientError,
	"missing_target":                          KindClientError,
	"bad_requested_token_type":                KindClientError,
	"envelope_bad_format":                     KindClientError,
	"envelope_too_large":                      KindClientError,
	"envelope_wrong_type":                     KindClientError,
	"envelope_alg_not_allowed":                KindClientError,
	"envelope_unknown_kid":                    KindClientError,
	"envelope_bad_signature":                  KindClientError,
	"envelope_expired":                        KindClientError,
	"envelope_not_yet_valid":                  KindClientError,
	"envelope_lifetime_too_long":              KindClientError,
	"envelope_issuer_mismatch":                KindClientError,
	"envelope_audience_mismatch":              KindClientError,
	"envelope_client_mismatch":                KindClientError,
	"envelope_missing_member":                 KindClientError,
	"envelope_bad_value":                      KindClientError,
	"client_keys_invalid":                     KindClientError,
	"client_keys_unavailable":                 KindUnavailable,
	"tenant_not_allowed":                      KindClientError,
	"act_chain_too_deep":                      KindClientError,
	"unknown_audience":                        KindClientError,
	"unknown_resource":                        KindClientError,
	"conflicting_targets":                     KindClientError,
	"audience_not_in_envelope":                KindClientError,
	"audience_not_allowed_for_client":         KindClientError,
	"mode_not_allowed_for_audience":           KindClientError,
	"mode_not_allowed_for_client":             KindClientError,
	"service_actor_requires_service_identity": KindClientError,
	"service_actor_not_allowed":               KindClientError,
	"no_active_grant":                         KindGrantRequired,
	"grant_does_not_cover_audience_or_mode":   KindGrantRequired,
	"grant_expires_too_soon":                  KindGrantRequired,
	"grant_revoked":                           KindGrantRequired,
	"scope_not_allowed":                       KindGrantRequired,
	"no_effective_scope":                      KindGrantRequired,
	"envelope_replayed":                       KindClientError,
	"storage_unavailable":                     KindUnavailable,
	"signing_failed":                          KindUnavailable,
	"internal_error":                          KindUnavailable,
	"token_not_issued_to_client":              KindClientError,
	"invalid_grant_request":                   KindClientError,
	"audience_requires_admin_consent":         KindClientError,
	"consent_duration_too_long":               KindClientError,
	"scope_not_requestable":                   KindClientError,
	"grant_request_not_found":                 KindClientError,
	"grant_request_expired":                   KindClientError,
	"grant_request_already_decided":           KindClientError,
	"grant_request_changed":                   KindClientError,
	"consent_wrong_user":                      KindClientError,
	"consent_wrong_tenant":                    KindClientError,
	"csrf_check_failed":                       KindClientError,
	"grant_not_yours":                         KindClientError,
	"grant_already_revoked":                   KindClientError,
	"sign_in_failed":                          KindClientError,
	"sign_in_without_tenant":                  KindClientError,
}

// retryAfter reads a Retry-After header: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(h), 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
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
	bases, err := parseBases(cfg.Audiences)
	if err != nil {
		return nil, err
	}
	return &Delegator{cfg: cfg, cache: make(map[string]cachedToken), bases: bases}, nil
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
		return cachedToken{}, &ExchangeError{Audience: audience, err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponseBytes))
	if err != nil {
		return cachedToken{}, fmt.Errorf("boundary: token exchange for %s: %w", audience, err)
	}
	var tr tokenResponse
	jsonErr := json.Unmarshal(raw, &tr)
	if resp.StatusCode != http.StatusOK {
		xe := &ExchangeError{Audience: audience, Status: resp.StatusCode,
			RetryAfter: retryAfter(resp.Header.Get("Retry-After"), d.cfg.Now())}
		if jsonErr != nil || tr.Error == "" {
			xe.Code, xe.Description = "server_error", fmt.Sprintf("HTTP %d", resp.StatusCode)
		} else {
			xe.Code, xe.Reason, xe.Description = tr.Error, tr.Reason, tr.Description
		}
		xe.GrantRequestEndpoint = tr.GrantReqURL
		return cachedToken{}, xe
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
