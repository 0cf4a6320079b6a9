// Package boundary is the identity boundary of an MCP server written in Go (SPEC §1, the
// seed design's "drop the original token"): net/http middleware that validates the
// inbound user token, derives the execution identity the envelope will carry (actor,
// agent, session, trace), removes the raw token from the request, and hands tool
// handlers that identity — never the token — through FromContext. A Delegator then
// exchanges the identity at Mandate for a short-lived token per downstream audience, and
// its RoundTripper attaches that token and the trace id to downstream calls.
//
// It works with the official MCP Go SDK (github.com/modelcontextprotocol/go-sdk): see
// Boundary.MCPHandler. It is an SDK MCP servers import, so it may import envelope and
// downstream (for JWKS-backed JWT verification) and must not import any server-side
// Mandate package (authz, exchange, api, storage, keys). Tokens are never logged and never
// stored in an Identity.
package boundary

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/mandatehq/mandate/downstream"
	"github.com/mandatehq/mandate/envelope"
)

// Identity is the execution identity of one request: what the envelope says and what tool
// handlers may trust. It never holds the inbound token.
type Identity struct {
	// Actor is the user the work is for (type "user"), from the inbound token.
	Actor envelope.Actor
	// Agent is the agent runtime executing the tool, with the MCP server's client_id.
	Agent envelope.Agent
	// Session carries the session id and the trace id of this request.
	Session envelope.Session
	// Scopes are the scopes the inbound token granted; the envelope carries them and
	// Mandate only ever narrows them.
	Scopes []string
	// Mode is the delegation mode the envelope asks for.
	Mode string
	// Issuer is the identity provider that issued the inbound token.
	Issuer string
	// ExpiresAt is the inbound token's expiry: the identity is not used after it.
	ExpiresAt time.Time
	// SpanID is the caller's W3C parent id, when a traceparent came in (else empty).
	SpanID string
	// TraceFlags are the W3C trace flags ("01" = sampled).
	TraceFlags string
}

type identityKey struct{}

// FromContext returns the identity the boundary derived for this request, or false when
// there is none (the request did not pass the boundary, or the identity has expired).
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	return id, ok && id != nil
}

// WithIdentity returns ctx carrying id (nil removes any identity).
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// Config configures a Boundary.
type Config struct {
	// Issuer is the inbound identity provider's issuer, compared exactly with iss.
	// Required.
	Issuer string
	// JWKSURL is the identity provider's JWK Set. Default Issuer + "/.well-known/jwks.json".
	JWKSURL string
	// Audience is this MCP server's own resource identifier: tokens minted for anything
	// else are refused (RFC 8707; the MCP authorization spec forbids token passthrough).
	// Required.
	Audience string
	// Algorithms allowed on inbound tokens; default ES256, ES384, EdDSA, RS256, PS256.
	Algorithms []string
	// Leeway on exp, iat and nbf; default 30 s.
	Leeway time.Duration
	// ClientID is this MCP server's client_id at Mandate (the envelope's agent.client_id).
	// Required.
	ClientID string
	// AgentID names the agent runtime when the token does not (see Claims.AgentID).
	// Required unless Claims.AgentID is set and always present.
	AgentID string
	// Mode is the delegation mode envelopes ask for; default on_behalf_of.
	Mode string
	// Claims maps inbound claims onto the identity.
	Claims ClaimMapping
	// ResourceMetadataURL, when set, is advertised in the 401 challenge (RFC 9728), so MCP
	// clients can discover where to get a token.
	ResourceMetadataURL string
	// JWKS tunes the key cache.
	JWKS downstream.JWKSOptions
	// Logger gets refusals (never tokens); default discards.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Boundary validates inbound tokens and derives identities. Safe for concurrent use.
type Boundary struct {
	cfg  Config
	jwks *downstream.JWKS
}

// New returns a Boundary.
func New(cfg Config) (*Boundary, error) {
	if cfg.Issuer == "" || cfg.Audience == "" || cfg.ClientID == "" {
		return nil, errors.New("boundary: Issuer, Audience and ClientID are required")
	}
	if cfg.AgentID == "" && cfg.Claims.AgentID == "" {
		return nil, errors.New("boundary: set AgentID or Claims.AgentID")
	}
	if cfg.JWKSURL == "" {
		cfg.JWKSURL = strings.TrimSuffix(cfg.Issuer, "/") + "/.well-known/jwks.json"
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []string{"ES256", "ES384", "EdDSA", "RS256", "PS256"}
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.Mode == "" {
		cfg.Mode = envelope.ModeOnBehalfOf
	}
	switch cfg.Mode {
	case envelope.ModeOnBehalfOf, envelope.ModeServiceIdentity, envelope.ModeRestrictedUser:
	default:
		return nil, fmt.Errorf("boundary: unknown delegation mode %q", cfg.Mode)
	}
	cfg.Claims = cfg.Claims.withDefaults()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.JWKS.Now == nil {
		cfg.JWKS.Now = cfg.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Boundary{cfg: cfg, jwks: downstream.NewJWKS(cfg.JWKSURL, cfg.JWKS)}, nil
}

// Authenticate validates an inbound token and derives the identity for a request with
// the given headers (traceparent, Mcp-Session-Id). The error names the failed check.
func (b *Boundary) Authenticate(ctx context.Context, token string, h http.Header) (*Identity, error) {
	payload, err := b.jwks.Verify(ctx, token, downstream.VerifyOptions{Algorithms: b.cfg.Algorithms, Type: inboundType})
	if err != nil {
		return nil, err
	}
	claims, err := decodeClaims(payload)
	if err != nil {
		return nil, err
	}
	now := b.cfg.Now()
	if err := checkRegistered(claims, b.cfg.Issuer, b.cfg.Audience, now, b.cfg.Leeway); err != nil {
		return nil, err
	}
	id, err := b.cfg.Claims.identity(claims)
	if err != nil {
		return nil, err
	}
	exp, _ := numericDate(claims["exp"])
	id.ExpiresAt = exp
	id.Issuer = b.cfg.Issuer
	id.Mode = b.cfg.Mode
	id.Agent.ClientID = b.cfg.ClientID
	id.Agent.Type = envelope.AgentTypeMCP
	if id.Agent.ID == "" {
		id.Agent.ID = b.cfg.AgentID
	}
	if id.Session.ID == "" {
		id.Session.ID = h.Get("Mcp-Session-Id")
	}
	if id.Session.ID == "" {
		id.Session.ID = "sess_" + randomHex(12)
	}
	if tp, ok := ParseTraceparent(h.Get("traceparent")); ok {
		id.Session.TraceID, id.SpanID, id.TraceFlags = tp.TraceID, tp.ParentID, tp.Flags
	} else {
		id.Session.TraceID, id.TraceFlags = NewTraceID(), "01"
	}
	return id, nil
}

// inboundType accepts what identity providers put in typ for access tokens: nothing,
// "JWT", or RFC 9068's at+jwt. Other types (an ID token marked "id+jwt", Mandate's own
// eie+jwt) are refused so one kind of token cannot stand in for another.
func inboundType(typ string) bool {
	switch strings.ToLower(typ) {
	case "", "jwt", "at+jwt", "application/at+jwt":
		return true
	}
	return false
}

// Middleware validates the bearer token of every request and passes on a copy of the
// request that no longer carries it: the Authorization header is deleted before next
// runs, and the identity is in the context (FromContext). Without a token it answers 401
// with a Bearer challenge; with a bad token 401 invalid_token; when the identity
// provider's keys cannot be fetched, 503.
func (b *Boundary) Middleware(next http.Handler) http.Handler {
	return b.authenticate(stripToken(next))
}

// stripToken deletes the Authorization header. Its request is already a clone made by
// authenticate, so the deletion cannot affect anything holding the original request.
func stripToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r)
	})
}

// authenticate verifies the token and calls next with a clone of the request (Clone
// deep-copies the header map) whose context carries the identity.
func (b *Boundary) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, errCode, errDesc := bearer(r)
		if token == "" {
			b.challenge(w, errCode, errDesc)
			return
		}
		id, err := b.Authenticate(r.Context(), token, r.Header)
		if err != nil {
			if errors.Is(err, downstream.ErrUnavailable) {
				b.cfg.Logger.WarnContext(r.Context(), "inbound token verification unavailable", "err", err)
				w.Header().Set("Retry-After", "5")
				http.Error(w, "token verification temporarily unavailable", http.StatusServiceUnavailable)
				return
			}
			b.cfg.Logger.InfoContext(r.Context(), "inbound token refused", "reason", err.Error())
			b.challenge(w, "invalid_token", err.Error())
			return
		}
		next.ServeHTTP(w, r.Clone(WithIdentity(r.Context(), id)))
	})
}

func bearer(r *http.Request) (token, errCode, errDesc string) {
	if r.URL.Query().Has("access_token") {
		return "", "invalid_request", "send the token in the Authorization header, not the URL"
	}
	vals := r.Header.Values("Authorization")
	if len(vals) != 1 {
		if len(vals) > 1 {
			return "", "invalid_request", "more than one Authorization header"
		}
		return "", "", ""
	}
	scheme, tok, _ := strings.Cut(vals[0], " ")
	tok = strings.TrimLeft(tok, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", "", ""
	}
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", "invalid_request", "malformed Authorization header"
	}
	return tok, "", ""
}

func (b *Boundary) challenge(w http.ResponseWriter, code, desc string) {
	var params []string
	if b.cfg.ResourceMetadataURL != "" {
		params = append(params, `resource_metadata="`+quotable(b.cfg.ResourceMetadataURL)+`"`)
	}
	status := http.StatusUnauthorized
	if code != "" {
		params = append(params, `error="`+code+`"`, `error_description="`+quotable(desc)+`"`)
		if code == "invalid_request" {
			status = http.StatusBadRequest
		}
	}
	c := "Bearer"
	if len(params) > 0 {
		c += " " + strings.Join(params, ", ")
	}
	w.Header().Set("WWW-Authenticate", c)
	w.Header().Set("Cache-Control", "no-store")
	msg := "a bearer token is required"
	if code != "" {
		msg = code + ": " + desc
	}
	http.Error(w, msg, status)
}

func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
