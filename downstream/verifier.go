package downstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Config configures a Verifier.
type Config struct {
	// Issuer is Mandate's issuer URL, compared exactly with iss. Required.
	Issuer string
	// Audience is this API's audience id as registered in Mandate; tokens for any other
	// audience are refused. Required.
	Audience string
	// JWKSURL defaults to Issuer + "/.well-known/jwks.json".
	JWKSURL string
	// Algorithms allowed in the token header; default ES256 and EdDSA, the two Mandate
	// signs with.
	Algorithms []string
	// Leeway tolerated on exp, iat and nbf; default 30 s.
	Leeway time.Duration
	// JWKS tunes the key cache (refresh rate limit, max age, HTTP client).
	JWKS JWKSOptions
	// Introspection enables AuthenticateOnline. Optional.
	Introspection *IntrospectionConfig
	// Realm is sent in WWW-Authenticate when set.
	Realm string
	// Logger receives verification failures (never tokens); default discards.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// IntrospectionConfig is how this API authenticates to Mandate's introspection endpoint:
// as a registered client, with client_secret_basic.
type IntrospectionConfig struct {
	// Endpoint defaults to Issuer + "/oauth2/introspect".
	Endpoint     string
	ClientID     string
	ClientSecret string
	// HTTPClient defaults to a client with a 10 s timeout.
	HTTPClient *http.Client
}

// Verifier verifies Mandate access tokens for one audience. It is safe for concurrent use.
type Verifier struct {
	cfg  Config
	jwks *JWKS
}

// New returns a Verifier. It fetches nothing until the first token arrives.
func New(cfg Config) (*Verifier, error) {
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("downstream: Issuer and Audience are required")
	}
	if strings.HasSuffix(cfg.Issuer, "/") {
		return nil, errors.New("downstream: Issuer must not end with a slash")
	}
	if cfg.JWKSURL == "" {
		cfg.JWKSURL = cfg.Issuer + "/.well-known/jwks.json"
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []string{"ES256", "EdDSA"}
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.JWKS.Now == nil {
		cfg.JWKS.Now = cfg.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if ic := cfg.Introspection; ic != nil {
		c := *ic
		if c.Endpoint == "" {
			c.Endpoint = cfg.Issuer + "/oauth2/introspect"
		}
		if c.ClientID == "" || c.ClientSecret == "" {
			return nil, errors.New("downstream: introspection needs ClientID and ClientSecret")
		}
		if c.HTTPClient == nil {
			c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
		}
		cfg.Introspection = &c
	}
	return &Verifier{cfg: cfg, jwks: NewJWKS(cfg.JWKSURL, cfg.JWKS)}, nil
}

// JWKS returns the Verifier's key cache.
func (v *Verifier) JWKS() *JWKS { return v.jwks }

// maxIntrospectionBytes bounds an introspection answer.
const maxIntrospectionBytes = 64 << 10

// Introspect asks Mandate whether token is active (RFC 7662) and checks the answer as
// Verify checks a JWT: issuer, audience, times. Use it where a revoked grant must stop
// working at once rather than when the token expires.
func (v *Verifier) Introspect(ctx context.Context, token string) (*Principal, error) {
	ic := v.cfg.Introspection
	if ic == nil {
		return nil, errors.New("downstream: introspection is not configured")
	}
	if len(token) > MaxTokenBytes {
		return nil, errors.New("token too large")
	}
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ic.Endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// RFC 6749 §2.3.1: the credentials are form-encoded before base64.
	req.SetBasicAuth(url.QueryEscape(ic.ClientID), url.QueryEscape(ic.ClientSecret))
	resp, err := ic.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: introspection: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIntrospectionBytes+1))
	if err != nil || len(body) > maxIntrospectionBytes {
		return nil, fmt.Errorf("%w: introspection answer unreadable", ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK {
		// 401 here means this API's own credentials are wrong: a server fault, not the
		// caller's.
		return nil, fmt.Errorf("%w: introspection answered HTTP %d", ErrUnavailable, resp.StatusCode)
	}
	var c wireClaims
	if err := decodeJSON(body, &c); err != nil || c.Active == nil {
		return nil, fmt.Errorf("%w: malformed introspection answer", ErrUnavailable)
	}
	if !*c.Active {
		return nil, errors.New("token is not active")
	}
	return v.principal(&c)
}

// Authenticate is middleware that verifies the bearer token offline and puts its
// Principal in the request context. Without a token it answers 401 with a bare Bearer
// challenge; with a bad one, 401 invalid_token.
func (v *Verifier) Authenticate(next http.Handler) http.Handler {
	return v.middleware(next, v.Verify)
}

// AuthenticateOnline is Authenticate through introspection: every request costs a round
// trip to Mandate, and a revoked token or grant is refused at once.
func (v *Verifier) AuthenticateOnline(next http.Handler) http.Handler {
	if v.cfg.Introspection == nil {
		panic("downstream: AuthenticateOnline needs Config.Introspection")
	}
	return v.middleware(next, v.Introspect)
}

// Protect is Authenticate followed by RequireScopes(scopes...).
func (v *Verifier) Protect(h http.Handler, scopes ...string) http.Handler {
	return v.Authenticate(v.RequireScopes(scopes...)(h))
}

// ProtectOnline is AuthenticateOnline followed by RequireScopes(scopes...).
func (v *Verifier) ProtectOnline(h http.Handler, scopes ...string) http.Handler {
	return v.AuthenticateOnline(v.RequireScopes(scopes...)(h))
}

func (v *Verifier) middleware(next http.Handler, verify func(context.Context, string) (*Principal, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, err := bearerToken(r)
		if err != nil {
			writeError(w, v.cfg.Realm, err.(*authError))
			return
		}
		p, err := verify(r.Context(), token)
		if err != nil {
			if errors.Is(err, ErrUnavailable) {
				v.cfg.Logger.WarnContext(r.Context(), "token verification unavailable", "err", err)
				writeUnavailable(w)
				return
			}
			v.cfg.Logger.InfoContext(r.Context(), "token refused", "reason", err.Error(), "audience", v.cfg.Audience)
			writeError(w, v.cfg.Realm, &authError{status: http.StatusUnauthorized, code: "invalid_token", desc: err.Error()})
			return
		}
		next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

// RequireScopes is middleware that answers 403 insufficient_scope unless the Principal
// holds every scope listed. It must run after Authenticate (without a Principal it
// answers 401).
func (v *Verifier) RequireScopes(scopes ...string) func(http.Handler) http.Handler {
	return requireScopes(v.cfg.Realm, scopes)
}

// RequireScopes is Verifier.RequireScopes without a realm.
func RequireScopes(scopes ...string) func(http.Handler) http.Handler {
	return requireScopes("", scopes)
}

func requireScopes(realm string, scopes []string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, ok := FromContext(r.Context())
			if !ok {
				writeError(w, realm, &authError{status: http.StatusUnauthorized})
				return
			}
			for _, s := range scopes {
				if !p.HasScope(s) {
					writeError(w, realm, &authError{
						status: http.StatusForbidden, code: "insufficient_scope",
						desc: "the token lacks a scope this resource requires", scope: strings.Join(scopes, " "),
					})
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}
