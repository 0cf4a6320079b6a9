package envelope

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode/utf8"
)

// Algorithms allowed in an envelope header (SPEC §3). Everything else,
// notably "none" and every HS*, is refused before any key is looked up.
const (
	AlgES256 = "ES256"
	AlgES384 = "ES384"
	AlgEdDSA = "EdDSA"
	AlgPS256 = "PS256"
	AlgRS256 = "RS256"
)

func algAllowed(alg string) bool {
	switch alg {
	case AlgES256, AlgES384, AlgEdDSA, AlgPS256, AlgRS256:
		return true
	}
	return false
}

// algFitsKey reports whether alg is the algorithm family of key, so an RSA
// key is never used for an ES256 header and a P-384 key never for ES256.
func algFitsKey(alg string, key any) bool {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		return (alg == AlgES256 && k.Curve == elliptic.P256()) ||
			(alg == AlgES384 && k.Curve == elliptic.P384())
	case ed25519.PublicKey:
		return alg == AlgEdDSA
	case *rsa.PublicKey:
		return alg == AlgPS256 || alg == AlgRS256
	}
	return false
}

// Client is what the verifier needs to know about the authenticated client
// presenting the envelope.
type Client struct {
	// ID is the authenticated client_id; iss and agent.client_id must equal it.
	ID string
	// Keys are the client's registered public keys; the header kid is looked
	// up here only.
	Keys KeySet
	// MaxLifetime bounds exp-iat. Zero means DefaultMaxLifetime; values above
	// MaxLifetimeCeiling are capped to it.
	MaxLifetime time.Duration
}

func (c Client) maxLifetime() time.Duration {
	switch {
	case c.MaxLifetime <= 0:
		return DefaultMaxLifetime
	case c.MaxLifetime > MaxLifetimeCeiling:
		return MaxLifetimeCeiling
	}
	return c.MaxLifetime
}

// Verifier checks envelopes for one Mandate issuer. It holds no per-request
// state and is safe for concurrent use.
type Verifier struct {
	// Issuer is Mandate's issuer URL, which aud must contain (exact match;
	// configure it without a trailing slash).
	Issuer string
	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time
}

// header is the protected header. Members the verifier must not act on
// (jku, x5u, jwk, x5c) are deliberately not decoded: keys come from the
// client's registration only.
type header struct {
	Alg  string          `json:"alg"`
	Typ  string          `json:"typ"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
	B64  json.RawMessage `json:"b64"`
}

// Verify checks raw, an envelope presented by client c, and returns its
// claims. Checks run in a fixed order, cheapest and least trusting first:
// size, compact shape, header (typ, alg, kid), key lookup in c.Keys,
// signature, then claims (iss, agent.client_id, aud, times, lifetime,
// required members and values). Every refusal is an *Error with a stable
// Reason. Verify does not check replay, tenants or grants: those are the
// exchange's.
func (v *Verifier) Verify(ctx context.Context, raw string, c Client) (*Claims, error) {
	if len(raw) > MaxTokenBytes {
		return nil, refuse(ReasonTooLarge, "the envelope is larger than 8 KiB")
	}
	dot1 := strings.IndexByte(raw, '.')
	dot2 := -1
	if dot1 >= 0 {
		if i := strings.IndexByte(raw[dot1+1:], '.'); i >= 0 {
			dot2 = dot1 + 1 + i
		}
	}
	if dot1 <= 0 || dot2 < 0 || dot2 == dot1+1 || dot2 == len(raw)-1 ||
		strings.IndexByte(raw[dot2+1:], '.') >= 0 || !base64URLChars(raw) {
		return nil, refuse(ReasonBadFormat, "the envelope is not a JWS in compact serialization")
	}
	h64, p64, s64 := raw[:dot1], raw[dot1+1:dot2], raw[dot2+1:]

	hdrJSON, err := base64.RawURLEncoding.Strict().DecodeString(h64)
	if err != nil {
		return nil, refusef(ReasonBadFormat, err, "the envelope header is not valid base64url")
	}
	var h header
	if err := decodeHeader(bytes.TrimSpace(hdrJSON), &h); err != nil {
		return nil, refusef(ReasonBadFormat, err, "the envelope header is not a valid JSON object")
	}
	// RFC 7515 §4.1.9: typ is a media type, compared case-insensitively,
	// and "application/" may be omitted.
	typ := strings.TrimPrefix(strings.ToLower(h.Typ), "application/")
	if typ != Type {
		return nil, refuse(ReasonWrongType, `the envelope header typ must be "eie+jwt"`)
	}
	if !algAllowed(h.Alg) {
		return nil, refuse(ReasonAlgNotAllowed, "the envelope alg must be one of ES256, ES384, EdDSA, PS256, RS256")
	}
	if h.Kid == "" {
		return nil, refuse(ReasonBadFormat, "the envelope header must name its signing key with kid")
	}
	// crit would demand extensions we do not implement (RFC 7515 §4.1.11);
	// b64=false would change what was signed (RFC 7797). Neither belongs in
	// an envelope.
	if h.Crit != nil || h.B64 != nil {
		return nil, refuse(ReasonBadFormat, "the envelope header must not use crit or b64")
	}

	key, err := lookupKey(ctx, c.Keys, h.Kid)
	if err != nil {
		return nil, err
	}
	if key.alg != "" && key.alg != h.Alg {
		return nil, refuse(ReasonAlgNotAllowed, "the envelope alg does not match the alg registered for its key")
	}
	if !algFitsKey(h.Alg, key.public) {
		return nil, refuse(ReasonAlgNotAllowed, "the envelope alg does not fit the type of its key")
	}

	sig, err := base64.RawURLEncoding.Strict().DecodeString(s64)
	if err != nil {
		return nil, refusef(ReasonBadFormat, err, "the envelope signature is not valid base64url")
	}
	if !verifySignature(h.Alg, key.public, raw[:dot2], sig) {
		return nil, refuse(ReasonBadSignature, "the envelope signature does not verify with the named key")
	}

	payload, err := base64.RawURLEncoding.Strict().DecodeString(p64)
	if err != nil {
		return nil, refusef(ReasonBadFormat, err, "the envelope claims are not valid base64url")
	}
	claims := new(Claims)
	if err := decodeClaims(bytes.TrimSpace(payload), claims); err != nil {
		return nil, refusef(ReasonBadFormat, err, "the envelope claims are not a JSON object with members of the expected types")
	}
	if err := v.checkClaims(claims, c); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Claims = claims
		}
		return nil, err
	}
	return claims, nil
}

// CheckUnsignedClaims applies to payload, an envelope's claims as JSON that nobody signed,
// every check Verify makes after the signature: the same decoding, then iss, agent.client_id,
// aud, times, lifetime and members, with the same reasons. It exists for tools that ask what
// Mandate would decide about an envelope before one is signed (Mandate's explain); it proves
// nothing about who wrote the claims, so never accept an envelope on its strength.
//
// A refusal after decoding carries the claims in Error.Claims, as Verify's does.
func (v *Verifier) CheckUnsignedClaims(payload []byte, c Client) (*Claims, error) {
	claims := new(Claims)
	if err := decodeClaims(bytes.TrimSpace(payload), claims); err != nil {
		return nil, refusef(ReasonBadFormat, err, "the envelope claims are not a JSON object with members of the expected types")
	}
	if err := v.checkClaims(claims, c); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Claims = claims
		}
		return nil, err
	}
	return claims, nil
}

// base64URLChars reports whether s holds only the base64url alphabet and
// dots. Go's decoder skips CR and LF even in strict mode, which would let
// one envelope be presented in many spellings.
func base64URLChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if !jwsChar[s[i]] {
			return false
		}
	}
	return true
}

// jwsChar is base64URLChars' alphabet as a table: one load per byte instead of five range
// tests, on every byte of every envelope (about 1% of the server's CPU).
var jwsChar = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
	}
	return t
}()

func lookupKey(ctx context.Context, ks KeySet, kid string) (*verificationKey, error) {
	if ks == nil {
		return nil, refuse(ReasonUnknownKID, "the client has no registered keys")
	}
	var (
		vk  *verificationKey
		err error
	)
	if src, ok := ks.(verificationKeySource); ok {
		vk, err = src.verificationKey(ctx, kid)
	} else {
		k, kerr := ks.Key(ctx, kid)
		err = kerr
		if err == nil {
			if k == nil {
				err = ErrUnknownKID
			} else if isPrivateMaterial(k) {
				return nil, refuse(ReasonUnknownKID, "the key named by kid is not a usable public signing key")
			} else if vk, err = prepareKey(k); err != nil {
				return nil, refusef(ReasonUnknownKID, err, "the key named by kid is not a usable public signing key")
			}
		}
	}
	switch {
	case err == nil:
		return vk, nil
	case errors.Is(err, ErrUnknownKID):
		return nil, refusef(ReasonUnknownKID, err, "the envelope kid is not one of the client's registered keys")
	default:
		return nil, refusef(ReasonKeysUnavailable, err, "the client's signing keys could not be obtained")
	}
}

// verifySignature checks sig over the JWS signing input with the standard
// library, so no JWK conversion or header re-parsing happens per request.
func verifySignature(alg string, key any, input string, sig []byte) bool {
	switch alg {
	case AlgES256, AlgES384:
		pub, ok := key.(*ecdsa.PublicKey)
		if !ok {
			return false
		}
		size := (pub.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size { // RFC 7518 §3.4: R || S, fixed width
			return false
		}
		var digest []byte
		if alg == AlgES256 {
			d := sha256.Sum256([]byte(input))
			digest = d[:]
		} else {
			d := sha512.Sum384([]byte(input))
			digest = d[:]
		}
		var buf [2 + 2*(3+48)]byte
		der, ok := rsToDER(buf[:0], sig[:size], sig[size:])
		return ok && ecdsa.VerifyASN1(pub, digest, der)
	case AlgEdDSA:
		pub, ok := key.(ed25519.PublicKey)
		return ok && len(sig) == ed25519.SignatureSize && ed25519.Verify(pub, []byte(input), sig)
	case AlgRS256, AlgPS256:
		pub, ok := key.(*rsa.PublicKey)
		if !ok {
			return false
		}
		d := sha256.Sum256([]byte(input))
		if alg == AlgRS256 {
			return rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig) == nil
		}
		// RFC 7518 §3.5 fixes the salt to the hash size; accept what the
		// signer chose as long as the signature is valid PSS.
		return rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil
	}
	return false
}

// rsToDER appends the ASN.1 ECDSA-Sig-Value of the fixed-width R || S halves r and s, as
// ecdsa.Verify builds it from big.Ints before calling VerifyASN1 (minimal INTEGERs, a zero byte
// before a set high bit), without the big.Int and builder allocations. ok is false when r or s
// is zero, which ecdsa.Verify refuses too. Halves are at most 48 bytes (P-384), so every length
// fits in one byte.
func rsToDER(dst, r, s []byte) (der []byte, ok bool) {
	trim := func(b []byte) []byte {
		for len(b) > 0 && b[0] == 0 {
			b = b[1:]
		}
		return b
	}
	r, s = trim(r), trim(s)
	if len(r) == 0 || len(s) == 0 {
		return nil, false
	}
	intLen := func(b []byte) int { return len(b) + int(b[0]>>7) }
	dst = append(dst, 0x30, byte(2+intLen(r)+2+intLen(s)))
	for _, b := range [2][]byte{r, s} {
		dst = append(dst, 0x02, byte(intLen(b)))
		if b[0]&0x80 != 0 {
			dst = append(dst, 0)
		}
		dst = append(dst, b...)
	}
	return dst, true
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// checkClaims applies SPEC §3 to verified claims.
func (v *Verifier) checkClaims(cl *Claims, c Client) error {
	if cl.Issuer == "" {
		return refuse(ReasonMissingMember, "the envelope has no iss")
	}
	if cl.Issuer != c.ID {
		return refuse(ReasonIssuerMismatch, "the envelope iss is not the authenticated client")
	}
	if cl.Agent.ClientID == "" {
		return refuse(ReasonMissingMember, "the envelope has no agent.client_id")
	}
	if cl.Agent.ClientID != c.ID {
		return refuse(ReasonClientMismatch, "the envelope agent.client_id is not the authenticated client")
	}
	if len(cl.Audience) == 0 {
		return refuse(ReasonMissingMember, "the envelope has no aud")
	}
	if v.Issuer == "" || !cl.Audience.Contains(v.Issuer) {
		return refuse(ReasonAudienceMismatch, "the envelope aud does not name this authorization server's issuer")
	}

	if cl.ExpiresAt.IsZero() {
		return refuse(ReasonMissingMember, "the envelope has no exp")
	}
	if cl.IssuedAt.IsZero() {
		return refuse(ReasonMissingMember, "the envelope has no iat")
	}
	now := v.now()
	if !now.Before(cl.ExpiresAt.Add(ClockSkew)) {
		return refuse(ReasonExpired, "the envelope has expired")
	}
	if cl.IssuedAt.After(now.Add(ClockSkew)) {
		return refuse(ReasonNotYetValid, "the envelope iat is in the future")
	}
	if !cl.NotBefore.IsZero() && cl.NotBefore.After(now.Add(ClockSkew)) {
		return refuse(ReasonNotYetValid, "the envelope is not valid yet (nbf)")
	}
	if !cl.ExpiresAt.After(cl.IssuedAt) {
		return refuse(ReasonBadValue, "the envelope exp must be after iat")
	}
	if cl.ExpiresAt.Sub(cl.IssuedAt) > c.maxLifetime() {
		return refuse(ReasonLifetimeTooLong, "the envelope lifetime (exp - iat) exceeds the client's maximum")
	}
	return checkMembers(cl)
}

// checkMembers applies the required-member and allowed-value rules. The
// Signer runs it too, so the SDK refuses what Mandate would refuse.
func checkMembers(cl *Claims) error {
	if cl.JTI == "" {
		return refuse(ReasonMissingMember, "the envelope has no jti")
	}
	if !utf8.ValidString(cl.JTI) || utf8.RuneCountInString(cl.JTI) > MaxJTILength {
		return refuse(ReasonBadValue, "the envelope jti is longer than 128 characters")
	}
	switch {
	case cl.Actor.Type == "":
		return refuse(ReasonMissingMember, "the envelope has no actor.type")
	case cl.Actor.Sub == "":
		return refuse(ReasonMissingMember, "the envelope has no actor.sub")
	case cl.Actor.Tenant == "":
		return refuse(ReasonMissingMember, "the envelope has no actor.tenant")
	case cl.Agent.ID == "":
		return refuse(ReasonMissingMember, "the envelope has no agent.id")
	case cl.Session.ID == "":
		return refuse(ReasonMissingMember, "the envelope has no session.id")
	case cl.Delegation.Mode == "":
		return refuse(ReasonMissingMember, "the envelope has no delegation.mode")
	}
	if cl.Actor.Sub == "*" {
		// In a grant "*" means every user of a tenant; as an actor it would be a wildcard
		// identity that a downstream API could mistake for a user of that name.
		return refuse(ReasonBadValue, `the envelope actor.sub must not be "*"`)
	}
	if cl.Actor.Type != ActorUser && cl.Actor.Type != ActorService {
		return refuse(ReasonBadValue, `the envelope actor.type must be "user" or "service"`)
	}
	switch cl.Delegation.Mode {
	case ModeOnBehalfOf, ModeServiceIdentity, ModeRestrictedUser:
	default:
		return refuse(ReasonBadValue, "the envelope delegation.mode must be on_behalf_of, service_identity or restricted_user")
	}
	if cl.Actor.Type == ActorService && cl.Delegation.Mode != ModeServiceIdentity {
		return refuse(ReasonBadValue, "an envelope for a service actor must use delegation mode service_identity")
	}
	switch cl.Authorization.Confidence {
	case "", ConfidenceVerified, ConfidenceEstimated:
	default:
		return refuse(ReasonBadValue, `the envelope authorization.confidence must be "verified" or "estimated"`)
	}
	for _, s := range cl.Authorization.Scopes {
		if !validScopeToken(s) {
			return refuse(ReasonBadValue, "the envelope authorization.scopes holds a value that is not a valid scope")
		}
	}
	for _, a := range cl.Delegation.Allowed {
		if a == "" {
			return refuse(ReasonBadValue, "the envelope delegation.allowed holds an empty audience")
		}
	}
	for a := cl.Act; a != nil; a = a.Act {
		if a.Sub == "" {
			return refuse(ReasonMissingMember, "an act entry of the envelope has no sub")
		}
		if hasControl(a.Sub) || hasControl(a.ClientID) {
			return refuse(ReasonBadValue, "an act entry of the envelope holds a control character")
		}
	}
	// Identifiers travel into tokens, logs and the audit log; a NUL or other control
	// character in one is never meaningful, can forge log lines, and Postgres refuses NUL in
	// text, which would turn a bad envelope into a storage fault.
	for _, f := range [...]struct{ name, v string }{
		{"jti", cl.JTI}, {"actor.sub", cl.Actor.Sub}, {"actor.tenant", cl.Actor.Tenant},
		{"agent.type", cl.Agent.Type}, {"agent.id", cl.Agent.ID}, {"session.id", cl.Session.ID},
		{"session.trace_id", cl.Session.TraceID},
	} {
		if hasControl(f.v) {
			return refuse(ReasonBadValue, "the envelope "+f.name+" holds a control character")
		}
	}
	for _, a := range cl.Delegation.Allowed {
		if hasControl(a) {
			return refuse(ReasonBadValue, "the envelope delegation.allowed holds a control character")
		}
	}
	return nil
}

// hasControl reports whether s holds an ASCII control character (U+0000–U+001F, U+007F).
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// validScopeToken is RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
// Scopes end up space-joined in the issued token, so a space (or a quote
// or backslash) inside one would forge another.
func validScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e {
			return false
		}
	}
	return true
}
