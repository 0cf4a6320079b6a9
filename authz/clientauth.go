package authz

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/ory/fosite"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// AssertionTypeJWTBearer is the client_assertion_type of private_key_jwt (RFC 7523 §2.2).
const AssertionTypeJWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// Limits on client assertions.
const (
	maxAssertionBytes = 8 << 10
	// maxAssertionLifetime bounds exp ahead of now: the jti's replay mark lives until exp, so
	// an assertion valid for a year would pin a mark for a year.
	maxAssertionLifetime = time.Hour
	maxAssertionJTI      = 256
	assertionClockSkew   = envelope.ClockSkew
)

// assertionAlgs are the signature algorithms accepted for client assertions: the envelope's
// allow-list (never none, never HS*: Mandate keeps no shared keys).
var assertionAlgs = []string{envelope.AlgES256, envelope.AlgES384, envelope.AlgEdDSA, envelope.AlgPS256, envelope.AlgRS256}

// authenticator is fosite's ClientAuthenticationStrategy. Secrets go through fosite's own
// strategy (Basic with RFC 6749 §2.3.1 form-decoding, post, method enforcement, rotated
// secrets). private_key_jwt is verified here instead, because fosite's version does not fit
// SPEC §4: it needs one fixed signing algorithm per client, skips keys without "use": "sig",
// supports neither EdDSA nor remote key sets that are shared with envelope verification, and
// spends the assertion's jti before checking its audience.
type authenticator struct {
	oauth    *fosite.Fosite
	store    *fositeStore
	keySets  *exchange.KeySets
	replay   storage.ReplayStore
	issuer   string
	tokenURL string
	now      func() time.Time
}

func (a *authenticator) authenticate(ctx context.Context, r *http.Request, form url.Values) (fosite.Client, error) {
	c, err := a.authenticateClient(ctx, r, form)
	if err == nil {
		noteAuthenticated(ctx, c.GetID())
	}
	return c, err
}

func (a *authenticator) authenticateClient(ctx context.Context, r *http.Request, form url.Values) (fosite.Client, error) {
	id, pw, basic := r.BasicAuth()
	if basic {
		// RFC 6749 §2.3.1: both are form-encoded inside Basic. fosite decodes them again; a
		// value that does not decode is a failed authentication, not a malformed request.
		for _, v := range [...]string{id, pw} {
			dec, err := url.QueryUnescape(v)
			if err != nil {
				// Not err: it quotes the bad escape, a piece of the secret.
				return nil, invalidClient("the Basic credentials are not form-encoded", nil)
			}
			if !isText(dec) {
				return nil, invalidClient("the Basic credentials are not UTF-8 text without NUL characters", nil)
			}
		}
	}
	if form.Has("client_assertion") || form.Has("client_assertion_type") {
		if basic || form.Has("client_secret") {
			return nil, invalidClient("more than one client authentication method was used", nil)
		}
		return a.privateKeyJWT(ctx, form)
	}
	switch {
	case basic && form.Has("client_secret"):
		return nil, invalidClient("more than one client authentication method was used", nil)
	case !basic && !form.Has("client_id"):
		return nil, invalidClient("client authentication is required", nil)
	}
	return a.oauth.DefaultClientAuthenticationStrategy(ctx, r, form)
}

type assertionHeader struct {
	Alg  string          `json:"alg"`
	Typ  string          `json:"typ"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
	B64  json.RawMessage `json:"b64"`
}

type assertionClaims struct {
	Iss string            `json:"iss"`
	Sub string            `json:"sub"`
	Aud envelope.Audience `json:"aud"`
	Exp *float64          `json:"exp"`
	Nbf *float64          `json:"nbf"`
	Iat *float64          `json:"iat"`
	JTI string            `json:"jti"`
}

// privateKeyJWT authenticates with a client assertion (RFC 7523 §2.2, §3). The jti is spent
// only after every other check passed, so a refused assertion can be corrected and resent.
func (a *authenticator) privateKeyJWT(ctx context.Context, form url.Values) (fosite.Client, error) {
	bad := func(why string, cause error) error { return invalidClient("invalid client_assertion: "+why, cause) }
	if form.Get("client_assertion_type") != AssertionTypeJWTBearer {
		return nil, invalidClient("unsupported client_assertion_type", nil)
	}
	raw := form.Get("client_assertion")
	switch {
	case raw == "":
		return nil, invalidRequest("client_assertion is required")
	case len(raw) > maxAssertionBytes:
		return nil, invalidRequest("client_assertion is larger than 8 KiB")
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, bad("not a compact JWS", nil)
	}
	var hdr assertionHeader
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return nil, bad("malformed header", err)
	}
	if hdr.Crit != nil || hdr.B64 != nil {
		return nil, bad("unsupported header parameters", nil)
	}
	if isEnvelopeType(hdr.Typ) {
		// Envelopes are signed with the same keys and name the issuer in aud too: one must
		// never stand in for the other (SPEC §10).
		return nil, bad("typ is "+envelope.Type+": an envelope is not a client assertion", nil)
	}
	if !contains(assertionAlgs, hdr.Alg) {
		return nil, bad("signature algorithm not allowed", nil)
	}
	if hdr.Kid == "" {
		return nil, bad("kid is required", nil)
	}
	// Unverified, only to find the client when client_id is not sent; everything is checked
	// again on the verified payload.
	var unverified assertionClaims
	if err := decodeSegment(parts[1], &unverified); err != nil {
		return nil, bad("malformed claims", err)
	}
	clientID := form.Get("client_id")
	if clientID == "" {
		clientID = unverified.Sub
	}
	if clientID == "" {
		return nil, bad("sub is required", nil)
	}
	if !isText(clientID) {
		return nil, bad("sub is not UTF-8 text without NUL characters", nil)
	}
	fc, err := a.store.GetClient(ctx, clientID)
	if err != nil {
		if errors.Is(err, errUnavailable) {
			return nil, err
		}
		return nil, invalidClient("client authentication failed", err)
	}
	c := fc.(*client).c
	if fc.(*client).GetTokenEndpointAuthMethod() != AuthPrivateKeyJWT {
		return nil, invalidClient("client authentication failed", errors.New("client is not registered for private_key_jwt"))
	}
	ks, err := a.keySets.For(c)
	if err != nil {
		return nil, invalidClient("client authentication failed", err)
	}
	key, err := ks.Key(ctx, hdr.Kid)
	if err != nil {
		if errors.Is(err, envelope.ErrKeysUnavailable) {
			// The client's own key server, not Mandate's store: the token exchange's reason
			// for the same failure, so a client can tell whom to blame.
			return nil, &oauthError{code: "temporarily_unavailable", reason: exchange.ReasonKeysUnavailable,
				description: "the client's signing keys could not be obtained; retry later",
				status:      http.StatusServiceUnavailable, cause: err}
		}
		return nil, bad("unknown kid", err)
	}
	if !keyFitsAlg(key, hdr.Alg) {
		return nil, bad("the key does not fit the signature algorithm", nil)
	}
	alg, _ := jwa.LookupSignatureAlgorithm(hdr.Alg)
	payload, err := jws.Verify([]byte(raw), jws.WithKey(alg, key))
	if err != nil {
		return nil, bad("signature does not verify", err)
	}
	var cl assertionClaims
	if err := strictJSON(payload, &cl); err != nil {
		return nil, bad("malformed claims", err)
	}
	now := a.now()
	switch {
	case cl.Iss != clientID || cl.Sub != clientID:
		return nil, bad("iss and sub must be the client_id", nil)
	case !cl.Aud.Contains(a.issuer) && !cl.Aud.Contains(a.tokenURL):
		return nil, bad("aud must be the issuer or the token endpoint", nil)
	case cl.Exp == nil:
		return nil, bad("exp is required", nil)
	case cl.JTI == "" || len(cl.JTI) > maxAssertionJTI:
		return nil, bad("jti is required (at most 256 characters)", nil)
	case !isText(cl.JTI):
		return nil, bad("jti is not UTF-8 text without NUL characters", nil)
	}
	exp, ok := numericDate(*cl.Exp)
	switch {
	case !ok:
		return nil, bad("exp out of range", nil)
	case !now.Before(exp.Add(assertionClockSkew)):
		return nil, bad("expired", nil)
	case exp.After(now.Add(maxAssertionLifetime)):
		return nil, bad("exp is more than an hour ahead", nil)
	}
	for _, t := range []*float64{cl.Nbf, cl.Iat} {
		if t == nil {
			continue
		}
		if v, ok := numericDate(*t); !ok || v.After(now.Add(assertionClockSkew)) {
			return nil, bad("issued or valid in the future", nil)
		}
	}
	err = a.replay.MarkUsed(ctx, storage.ReplayMark{
		Key:       fmt.Sprintf("assertion|%d:%s|%s", len(clientID), clientID, cl.JTI),
		ExpiresAt: exp.Add(assertionClockSkew),
	}, now)
	switch {
	case errors.Is(err, storage.ErrConflict):
		return nil, bad("already used", nil)
	case err != nil:
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	}
	return fc, nil
}

// isEnvelopeType reports whether a JWS typ names the EIE, case-insensitively and with or
// without the "application/" prefix (RFC 7515 §4.1.9).
func isEnvelopeType(typ string) bool {
	t := strings.ToLower(typ)
	return strings.TrimPrefix(t, "application/") == envelope.Type
}

func decodeSegment(seg string, dst any) error {
	b, err := base64.RawURLEncoding.Strict().DecodeString(seg)
	if err != nil {
		return err
	}
	return strictJSON(b, dst)
}

// strictJSON decodes one JSON object and nothing after it.
func strictJSON(b []byte, dst any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

func numericDate(f float64) (time.Time, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<37 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// keyFitsAlg reports whether the key's type (and its own alg, when it names one) suits alg,
// so an RSA key never verifies an ES256 header nor a P-384 key an ES256 one.
func keyFitsAlg(k jwk.Key, alg string) bool {
	if ka, ok := k.Algorithm(); ok && ka.String() != alg {
		return false
	}
	var raw any
	if err := jwk.Export(k, &raw); err != nil {
		return false
	}
	switch p := raw.(type) {
	case *ecdsa.PublicKey:
		return (alg == envelope.AlgES256 && p.Curve == elliptic.P256()) || (alg == envelope.AlgES384 && p.Curve == elliptic.P384())
	case ed25519.PublicKey:
		return alg == envelope.AlgEdDSA
	case *rsa.PublicKey:
		return (alg == envelope.AlgPS256 || alg == envelope.AlgRS256) && p.N.BitLen() >= 2048
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
