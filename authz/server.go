package authz

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/ory/fosite"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/throttle"
)

// Keys is what this package needs of Mandate's signing keys (package keys' Manager).
type Keys interface {
	// VerifyFresh checks a token Mandate signed (signature, alg, kid, typ at+jwt by default)
	// and returns its payload. A kid this replica has not loaded makes it reload the keys
	// first (another replica may have just made that key); errors wrapping
	// keys.ErrUnavailable mean that reload failed and the token's fate is unknown.
	VerifyFresh(ctx context.Context, token string, opts ...keys.VerifyOption) (payload []byte, kid string, err error)
	// JWKS is the published key set and its entity tag.
	JWKS() (doc []byte, etag string)
}

// Deps are the Server's collaborators. Issuer, Exchange, Store, Keys and Hasher are required.
type Deps struct {
	// Issuer is Mandate's issuer URL without a trailing slash; endpoint URLs are built on it.
	Issuer   string
	Exchange *exchange.Service
	Store    storage.Store
	Keys     Keys
	Hasher   *secret.Hasher
	Logger   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// JWKSMaxAge is the JWKS's Cache-Control max-age; default 5 minutes (keys are published
	// well ahead of signing, so verifiers refreshing this often see a new key in time).
	JWKSMaxAge time.Duration
	// Ready reports readiness for /readyz; nil means Store.Ping.
	Ready func(ctx context.Context) error
	// Throttle tunes the accounting of requests refused before their client was
	// authenticated (SPEC §8): per remote address, throttled when it keeps failing, and
	// aggregated into audit records that RecordAuthFailures writes. Its clock defaults to Now.
	Throttle throttle.Config
	// OnUnauthenticated, when set, is told of each request refused before its client was
	// authenticated, with the endpoint (token, introspect, revoke) and the reason code
	// (rate_limited when throttled): for metrics, never with the claimed client id.
	OnUnauthenticated func(endpoint, reason string)
}

// Endpoint paths, relative to the issuer.
const (
	PathToken        = "/oauth2/token"
	PathIntrospect   = "/oauth2/introspect"
	PathRevoke       = "/oauth2/revoke"
	PathJWKS         = "/.well-known/jwks.json"
	PathASMetadata   = "/.well-known/oauth-authorization-server"
	PathOIDCMetadata = "/.well-known/openid-configuration"
)

// Limits from SPEC §10.
const (
	maxBodyBytes  = 64 << 10
	maxTokenBytes = 8 << 10
)

// Server is the public OAuth listener's handler. It also authenticates admin bearer tokens
// (AuthenticateBearer) for the admin API.
type Server struct {
	issuer   string
	exchange *exchange.Service
	store    storage.Store
	keys     Keys
	oauth    *fosite.Fosite
	log      *slog.Logger
	now      func() time.Time
	jwksAge  time.Duration
	ready    func(ctx context.Context) error
	mux      *http.ServeMux
	failures *throttle.Tracker

	onUnauthenticated func(endpoint, reason string)
}

// NewHandler builds the Server. It panics when a required dependency is missing: that is a
// wiring bug, found by the first test that builds it.
func NewHandler(d Deps) *Server {
	if d.Issuer == "" || d.Exchange == nil || d.Store == nil || d.Keys == nil || d.Hasher == nil {
		panic("authz: Issuer, Exchange, Store, Keys and Hasher are required")
	}
	s := &Server{
		issuer: d.Issuer, exchange: d.Exchange, store: d.Store, keys: d.Keys,
		log: d.Logger, now: d.Now, jwksAge: d.JWKSMaxAge, ready: d.Ready,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.jwksAge <= 0 {
		s.jwksAge = 5 * time.Minute
	}
	if s.ready == nil {
		s.ready = d.Store.Ping
	}
	tc := d.Throttle
	if tc.Now == nil {
		tc.Now = s.now
	}
	s.failures = throttle.New(tc)
	s.onUnauthenticated = d.OnUnauthenticated
	if s.onUnauthenticated == nil {
		s.onUnauthenticated = func(string, string) {}
	}

	fs := &fositeStore{catalog: d.Exchange.Catalog(), replay: d.Store, now: s.now}
	auth := &authenticator{
		store: fs, keySets: d.Exchange.KeySets(), replay: d.Store,
		issuer: d.Issuer, tokenURL: d.Issuer + PathToken, now: s.now,
	}
	cfg := &fosite.Config{
		TokenURL:                     d.Issuer + PathToken,
		ClientSecretsHasher:          secretHasher{d.Hasher},
		ClientAuthenticationStrategy: auth.authenticate,
		SendDebugMessagesToClients:   false,
		TokenEndpointHandlers: fosite.TokenEndpointHandlers{
			&tokenExchangeHandler{svc: d.Exchange},
			&clientCredentialsHandler{svc: d.Exchange},
			unsupportedGrantHandler{},
		},
	}
	s.oauth = fosite.NewOAuth2Provider(fs, cfg)
	auth.oauth = s.oauth
	s.mux = s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }
