// Command gen-vectors writes testdata/vectors/envelopes.json and access_tokens.json.
//
//	go run ./internal/vectors/cmd/gen-vectors
//
// Keys already in the files are kept (so SDK fixtures that copy them stay valid); tokens are
// signed afresh. The signing here is deliberately hand-rolled and independent of Mandate's
// own envelope and keys packages: a vector must be able to say "alg none", "a key in the
// header" or "HS256 with the public key as secret", which no well-behaved signer would make.
package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/internal/vectors"
)

const (
	issuer   = "https://mandate.test"
	clientID = "vectors-mcp"
	now      = int64(1798761600) // 2027-01-01T00:00:00Z
	maxLife  = 300
)

// key is one signing key of the vectors.
type key struct {
	kid, alg string
	priv     crypto.Signer
}

func main() {
	log.SetFlags(0)
	dir := vectors.Dir()
	envKeys := loadKeys(filepath.Join(dir, "envelopes.json"), "private_jwks", []struct{ kid, alg string }{
		{"es256-1", "ES256"}, {"es384-1", "ES384"}, {"eddsa-1", "EdDSA"}, {"ps256-1", "PS256"}, {"rs256-1", "RS256"},
	})
	// The attacker's key is never registered: it signs the "key in the header" vectors.
	attacker := genKey("attacker-1", "ES256")
	writeJSON(filepath.Join(dir, "envelopes.json"), envelopeFile(envKeys, attacker))

	atKeys := loadKeys(filepath.Join(dir, "access_tokens.json"), "private_jwks", []struct{ kid, alg string }{
		{"mandate-es256", "ES256"}, {"mandate-eddsa", "EdDSA"},
	})
	writeJSON(filepath.Join(dir, "access_tokens.json"), accessTokenFile(atKeys, attacker))
	log.Printf("wrote %s", dir)
}

// ---------------------------------------------------------------------------------------------
// Envelopes

func baseClaims() map[string]any {
	return map[string]any{
		"iss":           clientID,
		"aud":           issuer,
		"iat":           now - 10,
		"exp":           now + 50,
		"jti":           "",
		"actor":         map[string]any{"type": "user", "sub": "alice", "tenant": "acme"},
		"agent":         map[string]any{"type": "mcp_agent", "id": "support-agent", "client_id": clientID},
		"session":       map[string]any{"id": "sess-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
		"authorization": map[string]any{"scopes": []any{"orders:read"}, "confidence": "verified"},
		"delegation":    map[string]any{"mode": "on_behalf_of", "allowed": []any{"orders_api"}},
	}
}

// envCase describes one envelope vector: how its claims and header differ from the base.
type envCase struct {
	name, description string
	kid               string // signing key (default es256-1)
	claims            func(c map[string]any)
	header            func(h map[string]any)
	raw               func(k key, attacker key, c map[string]any) string // a hand-made token instead
	reason, wire      string                                             // "" = valid
	signer            string
}

func envelopeCases() []envCase {
	member := func(path string, v any) func(map[string]any) {
		return func(c map[string]any) { set(c, path, v) }
	}
	del := func(path string) func(map[string]any) {
		return func(c map[string]any) { set(c, path, nil) }
	}
	refuse := func(name, desc, reason string, mut func(map[string]any)) envCase {
		return envCase{name: name, description: desc, claims: mut, reason: reason, signer: vectors.SignerRefuse}
	}
	ctx := func(name, desc, reason string, mut func(map[string]any)) envCase {
		return envCase{name: name, description: desc, claims: mut, reason: reason, signer: vectors.SignerNA}
	}
	return []envCase{
		{name: "es256", description: "A valid envelope signed with ES256 (P-256).", kid: "es256-1", signer: vectors.SignerAccept},
		{name: "es384", description: "A valid envelope signed with ES384 (P-384).", kid: "es384-1", signer: vectors.SignerAccept},
		{name: "eddsa", description: "A valid envelope signed with EdDSA (Ed25519).", kid: "eddsa-1", signer: vectors.SignerAccept},
		{name: "ps256", description: "A valid envelope signed with PS256 (RSA-PSS, 2048 bits).", kid: "ps256-1", signer: vectors.SignerAccept},
		{name: "rs256", description: "A valid envelope signed with RS256 (RSA PKCS #1 v1.5, 2048 bits).", kid: "rs256-1", signer: vectors.SignerAccept},
		{name: "aud-array", description: "aud may be an array that contains the issuer.", signer: vectors.SignerAccept,
			claims: member("aud", []any{"https://other.example", issuer})},
		{name: "nbf-past", description: "nbf in the past is fine.", signer: vectors.SignerAccept, claims: member("nbf", now-5)},
		{name: "service-actor", description: "A service actor in service_identity mode is a valid envelope (whether the client may present it is the exchange's policy).",
			signer: vectors.SignerAccept, claims: func(c map[string]any) {
				set(c, "actor", map[string]any{"type": "service", "sub": "nightly-batch", "tenant": "acme"})
				set(c, "delegation.mode", "service_identity")
			}},
		{name: "act-chain", description: "A prior act chain of two agents.", signer: vectors.SignerAccept,
			claims: member("act", map[string]any{"sub": "planner", "client_id": "upstream-mcp", "act": map[string]any{"sub": "router"}})},
		{name: "unknown-claims-ignored", description: "Claims the profile does not define are ignored.", signer: vectors.SignerNA,
			claims: member("x_custom", map[string]any{"anything": true})},
		{name: "typ-mixed-case", description: "typ is compared case-insensitively, with an optional application/ prefix (RFC 7515 §4.1.9).",
			signer: vectors.SignerNA, header: func(h map[string]any) { h["typ"] = "application/EIE+JWT" }},
		{name: "clock-skew-exp", description: "exp 30 s ago is inside the 60 s clock skew.", signer: vectors.SignerNA,
			claims: func(c map[string]any) { c["iat"], c["exp"] = now-100, now-30 }},

		// header and signature
		{name: "alg-none", description: `alg "none" is never accepted.`, reason: "alg_not_allowed", signer: vectors.SignerNA,
			raw: func(k, _ key, c map[string]any) string {
				return compact(map[string]any{"alg": "none", "typ": "eie+jwt", "kid": k.kid}, c, []byte("x"))
			}},
		{name: "alg-hs256-public-key", description: "HS256 keyed with the registered public key (algorithm confusion) is refused.",
			reason: "alg_not_allowed", signer: vectors.SignerNA, raw: func(k, _ key, c map[string]any) string {
				return hmacWithPublicKey(k, "eie+jwt", c)
			}},
		{name: "alg-key-mismatch", description: "The header's alg must be the registered key's alg: ES384 named with the ES256 key.",
			reason: "alg_not_allowed", signer: vectors.SignerNA, header: func(h map[string]any) { h["alg"] = "ES384" }},
		{name: "typ-jwt", description: `typ "JWT" is refused: an envelope must say eie+jwt.`, reason: "wrong_type", signer: vectors.SignerNA,
			header: func(h map[string]any) { h["typ"] = "JWT" }},
		{name: "typ-at-jwt", description: "An access token type (at+jwt) is not an envelope.", reason: "wrong_type", signer: vectors.SignerNA,
			header: func(h map[string]any) { h["typ"] = "at+jwt" }},
		{name: "typ-missing", description: "typ is required.", reason: "wrong_type", signer: vectors.SignerNA,
			header: func(h map[string]any) { delete(h, "typ") }},
		{name: "kid-missing", description: "kid is required.", reason: "bad_format", signer: vectors.SignerNA,
			header: func(h map[string]any) { delete(h, "kid") }},
		{name: "kid-unknown", description: "A kid the client did not register.", reason: "unknown_kid", signer: vectors.SignerNA,
			header: func(h map[string]any) { h["kid"] = "not-registered" }},
		{name: "jwk-in-header", description: "A key carried in the header is never used: the attacker's key, kid unknown to the client.",
			reason: "unknown_kid", signer: vectors.SignerNA, raw: func(_, a key, c map[string]any) string {
				h := map[string]any{"alg": "ES256", "typ": "eie+jwt", "kid": a.kid, "jwk": publicJWK(a)}
				return signCompact(a, h, c)
			}},
		{name: "jwk-in-header-registered-kid", description: "The attacker's key in the header under a registered kid: the registered key is used, and the signature fails.",
			reason: "bad_signature", signer: vectors.SignerNA, raw: func(k, a key, c map[string]any) string {
				h := map[string]any{"alg": "ES256", "typ": "eie+jwt", "kid": "es256-1", "jwk": publicJWK(a)}
				return signCompact(a, h, c)
			}},
		{name: "bad-signature", description: "The payload was changed after signing.", reason: "bad_signature", signer: vectors.SignerNA,
			raw: func(k, _ key, c map[string]any) string {
				tok := signCompact(k, header(k), c)
				parts := strings.Split(tok, ".")
				c2 := clone(c)
				set(c2, "actor.sub", "mallory")
				parts[1] = segment(c2)
				return strings.Join(parts, ".")
			}},
		{name: "crit-header", description: "crit would demand extensions Mandate does not implement.", reason: "bad_format", signer: vectors.SignerNA,
			header: func(h map[string]any) { h["crit"] = []any{"exp"} }},
		{name: "not-compact", description: "Two segments are not a compact JWS.", reason: "bad_format", signer: vectors.SignerNA,
			raw: func(k, _ key, c map[string]any) string { return segment(header(k)) + "." + segment(c) }},
		{name: "too-large", description: "Envelopes over 8 KiB are refused before any parsing.", reason: "too_large", signer: vectors.SignerRefuse,
			claims: member("authorization.scopes", bigScopes())},

		// times and lifetime
		ctx("expired", "exp more than 60 s ago.", "expired", func(c map[string]any) { c["iat"], c["exp"] = now-200, now-61 }),
		ctx("iat-in-future", "iat more than 60 s ahead.", "not_yet_valid", func(c map[string]any) { c["iat"], c["exp"] = now+61, now+120 }),
		ctx("nbf-in-future", "nbf more than 60 s ahead.", "not_yet_valid", member("nbf", now+61)),
		ctx("lifetime-over-client-max", "exp - iat of 301 s exceeds the client's 300 s.", "lifetime_too_long",
			func(c map[string]any) { c["iat"], c["exp"] = now-1, now+300 }),
		refuse("exp-before-iat", "exp must be after iat.", "bad_value", func(c map[string]any) { c["iat"], c["exp"] = now, now }),
		refuse("lifetime-over-ceiling", "exp - iat over 3600 s is refused whatever the client allows.", "lifetime_too_long",
			func(c map[string]any) { c["iat"], c["exp"] = now-10, now+3591 }),
		{name: "exp-as-string", description: "NumericDates are numbers, never strings.", reason: "bad_format", signer: vectors.SignerNA,
			claims: member("exp", fmt.Sprint(now+50))},
		ctx("exp-missing", "exp is required.", "missing_member", del("exp")),
		ctx("iat-missing", "iat is required.", "missing_member", del("iat")),

		// identities
		ctx("iss-other-client", "iss must be the authenticated client.", "issuer_mismatch", member("iss", "other-mcp")),
		refuse("agent-client-id-mismatch", "agent.client_id must equal iss.", "client_mismatch", member("agent.client_id", "other-mcp")),
		ctx("aud-other", "aud must contain Mandate's issuer.", "audience_mismatch", member("aud", "https://other.example")),
		ctx("aud-trailing-slash", "aud is compared exactly: a trailing slash is another value.", "audience_mismatch", member("aud", issuer+"/")),

		// members
		ctx("jti-missing", "jti is required (SDK signers generate one).", "missing_member", del("jti")),
		refuse("jti-too-long", "jti is at most 128 characters.", "bad_value", member("jti", strings.Repeat("j", 129))),
		refuse("actor-sub-missing", "actor.sub is required.", "missing_member", del("actor.sub")),
		refuse("actor-tenant-missing", "actor.tenant is required.", "missing_member", del("actor.tenant")),
		refuse("actor-type-missing", "actor.type is required.", "missing_member", del("actor.type")),
		refuse("agent-id-missing", "agent.id is required.", "missing_member", del("agent.id")),
		refuse("session-id-missing", "session.id is required.", "missing_member", del("session.id")),
		refuse("mode-missing", "delegation.mode is required.", "missing_member", del("delegation.mode")),
		refuse("actor-sub-star", `"*" means every user only inside a grant; it is never an actor.`, "bad_value", member("actor.sub", "*")),
		refuse("actor-type-unknown", `actor.type is "user" or "service".`, "bad_value", member("actor.type", "robot")),
		refuse("mode-unknown", "delegation.mode is one of three values.", "bad_value", member("delegation.mode", "impersonate")),
		refuse("service-actor-on-behalf-of", "A service actor must use service_identity.", "bad_value",
			member("actor", map[string]any{"type": "service", "sub": "nightly-batch", "tenant": "acme"})),
		refuse("confidence-unknown", `authorization.confidence is "verified" or "estimated".`, "bad_value", member("authorization.confidence", "certain")),
		refuse("scope-with-space", "A scope token has no spaces (RFC 6749 §3.3).", "bad_value", member("authorization.scopes", []any{"orders:read orders:write"})),
		refuse("control-character", "Identifiers hold no control characters.", "bad_value", member("actor.sub", "alice\nbob")),
		refuse("allowed-empty-string", "delegation.allowed holds no empty audience.", "bad_value", member("delegation.allowed", []any{""})),
		refuse("act-entry-without-sub", "Every act entry names its sub.", "missing_member", member("act", map[string]any{"client_id": "upstream-mcp"})),
	}
}

func envelopeFile(keys map[string]key, attacker key) vectors.EnvelopeFile {
	f := vectors.EnvelopeFile{
		Description: "Signed Execution Identity Envelopes and the verdict Mandate gives each (docs/vectors.md). " +
			"Judge every vector at now, with the client's registered jwks and max_envelope_lifetime.",
		Issuer: issuer, ClientID: clientID, Now: now, MaxEnvelopeLifetime: maxLife,
		JWKS: publicSet(keys), PrivateJWKS: privateSet(keys),
	}
	for _, tc := range envelopeCases() {
		c := baseClaims()
		c["jti"] = "vec-" + tc.name
		if tc.claims != nil {
			tc.claims(c)
		}
		k := keys["es256-1"]
		if tc.kid != "" {
			k = keys[tc.kid]
		}
		var tok string
		switch {
		case tc.raw != nil:
			tok = tc.raw(k, attacker, c)
		default:
			h := header(k)
			if tc.header != nil {
				tc.header(h)
			}
			tok = signCompact(k, h, c)
		}
		v := vectors.EnvelopeVector{
			Name: tc.name, Description: tc.description, Token: tok, Valid: tc.reason == "",
			Reason: tc.reason, Signer: tc.signer,
		}
		v.Claims, _ = json.Marshal(c)
		if tc.reason != "" {
			v.WireReason = "envelope_" + tc.reason
			if tc.reason == "too_large" {
				// The token endpoint refuses the oversized parameter before it is parsed.
				v.WireReason = "subject_token_too_large"
			}
		}
		f.Vectors = append(f.Vectors, v)
	}
	return f
}

func bigScopes() []any {
	var s []any
	for i := 0; len(s) < 700; i++ {
		s = append(s, fmt.Sprintf("scope:%04d", i))
	}
	return s
}

// ---------------------------------------------------------------------------------------------
// Access tokens

func tokenClaims() map[string]any {
	return map[string]any{
		"iss": issuer, "sub": "alice", "aud": "orders_api", "exp": now + 290, "iat": now - 10,
		"jti": "", "client_id": "mcp-web", "scope": "orders:read orders:write", "tenant": "acme",
		"delegation_mode": "on_behalf_of", "actor_type": "user", "actor_sub": "alice", "agent_id": "support-agent",
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "session_id": "sess-1", "grant_id": "grt_1",
		"act": map[string]any{"sub": "support-agent", "client_id": "mcp-web"},
	}
}

type atCase struct {
	name, description string
	kid               string
	claims            func(c map[string]any)
	header            func(h map[string]any)
	raw               func(k, attacker key, c map[string]any) string
	required          []string
	err               string // "" = valid
	principal         func(c map[string]any) *vectors.Principal
}

func accessTokenCases() []atCase {
	member := func(path string, v any) func(map[string]any) { return func(c map[string]any) { set(c, path, v) } }
	invalid := func(name, desc string, mut func(map[string]any)) atCase {
		return atCase{name: name, description: desc, claims: mut, err: "invalid_token"}
	}
	badHeader := func(name, desc string, mut func(map[string]any)) atCase {
		return atCase{name: name, description: desc, header: mut, err: "invalid_token"}
	}
	return []atCase{
		{name: "user-on-behalf-of", description: "A user's token in on_behalf_of mode, with a prior act chain asserted by the MCP server.",
			required: []string{"orders:read"}, claims: member("act", map[string]any{"sub": "support-agent", "client_id": "mcp-web",
				"act": map[string]any{"sub": "planner", "client_id": "upstream-mcp"}})},
		{name: "user-eddsa", description: "Mandate may sign with EdDSA.", kid: "mandate-eddsa", required: []string{"orders:write"}},
		{name: "user-service-identity", description: "service_identity for a user: sub is the client, the user is actor_sub, no act.",
			claims: func(c map[string]any) {
				c["delegation_mode"], c["sub"] = "service_identity", "mcp-web"
				delete(c, "act")
			}},
		{name: "user-restricted", description: "restricted_user: sub is the user and there is no act; the agent comes from agent_id.",
			claims: func(c map[string]any) { c["delegation_mode"] = "restricted_user"; delete(c, "act") }},
		{name: "service-actor", description: "A service actor: never a user, whatever actor_sub says.",
			claims: func(c map[string]any) {
				c["delegation_mode"], c["sub"], c["actor_type"], c["actor_sub"] = "service_identity", "mcp-web", "service", "nightly-batch"
				delete(c, "act")
				delete(c, "grant_id")
			}},
		{name: "aud-array", description: "aud as an array that contains the audience (Mandate sends a string; verifiers accept both).",
			claims: member("aud", []any{"orders_api", "other_api"})},
		{name: "expired-within-leeway", description: "exp 20 s ago is inside the 30 s leeway.",
			claims: func(c map[string]any) { c["iat"], c["exp"] = now-300, now-20 }},
		{name: "missing-scope", description: "A route that needs a scope the token lacks: 403 insufficient_scope.",
			required: []string{"orders:delete"}, err: "insufficient_scope"},

		invalid("expired", "exp more than the leeway ago.", func(c map[string]any) { c["iat"], c["exp"] = now-300, now-31 }),
		invalid("iat-in-future", "iat beyond the leeway.", func(c map[string]any) { c["iat"], c["exp"] = now+31, now+300 }),
		invalid("nbf-in-future", "nbf beyond the leeway.", member("nbf", now+31)),
		invalid("exp-missing", "exp is required.", member("exp", nil)),
		invalid("wrong-issuer", "iss must equal the configured issuer exactly.", member("iss", issuer+"/")),
		invalid("wrong-audience", "A token for another API.", member("aud", "billing_api")),
		invalid("missing-actor-type", "A token-exchange token without actor_type could be a service read as a user: refused.", member("actor_type", nil)),
		invalid("unknown-actor-type", `actor_type is "user" or "service".`, member("actor_type", "robot")),
		badHeader("typ-jwt", `typ must be at+jwt (RFC 9068): "JWT" is another kind of token.`, func(h map[string]any) { h["typ"] = "JWT" }),
		badHeader("typ-eie", "An envelope is not an access token.", func(h map[string]any) { h["typ"] = "eie+jwt" }),
		badHeader("typ-missing", "typ is required.", func(h map[string]any) { delete(h, "typ") }),
		badHeader("kid-unknown", "A kid not in Mandate's JWKS.", func(h map[string]any) { h["kid"] = "gone" }),
		{name: "alg-none", description: `alg "none".`, err: "invalid_token", raw: func(k, _ key, c map[string]any) string {
			return compact(map[string]any{"alg": "none", "typ": "at+jwt", "kid": k.kid}, c, []byte("x"))
		}},
		{name: "alg-hs256-public-key", description: "HS256 keyed with Mandate's public key.", err: "invalid_token",
			raw: func(k, _ key, c map[string]any) string { return hmacWithPublicKey(k, "at+jwt", c) }},
		{name: "jwk-in-header", description: "An attacker's key in the header, under Mandate's kid.", err: "invalid_token",
			raw: func(k, a key, c map[string]any) string {
				return signCompact(a, map[string]any{"alg": "ES256", "typ": "at+jwt", "kid": k.kid, "jwk": publicJWK(a)}, c)
			}},
		{name: "bad-signature", description: "The payload was changed after signing.", err: "invalid_token",
			raw: func(k, _ key, c map[string]any) string {
				parts := strings.Split(signCompact(k, atHeader(k), c), ".")
				c2 := clone(c)
				c2["scope"] = "orders:read orders:write orders:delete"
				parts[1] = segment(c2)
				return strings.Join(parts, ".")
			}},
	}
}

func principalOf(c map[string]any) *vectors.Principal {
	str := func(k string) string { s, _ := c[k].(string); return s }
	num := func(k string) int64 { n, _ := c[k].(int64); return n }
	p := &vectors.Principal{
		ActorType: str("actor_type"), Tenant: str("tenant"), Subject: str("sub"), Mode: str("delegation_mode"),
		ClientID: str("client_id"), Scopes: strings.Fields(str("scope")), TraceID: str("trace_id"),
		SessionID: str("session_id"), GrantID: str("grant_id"), JTI: str("jti"), IssuedAt: num("iat"), ExpiresAt: num("exp"),
		PriorActors: []vectors.Actor{},
	}
	if p.ActorType == "service" {
		p.Service = str("actor_sub")
	} else {
		p.User = str("actor_sub")
	}
	if act, ok := c["act"].(map[string]any); ok {
		p.Agent = vectors.Actor{Sub: fmt.Sprint(act["sub"]), ClientID: fmt.Sprint(act["client_id"])}
		for a, ok := act["act"].(map[string]any); ok; a, ok = a["act"].(map[string]any) {
			cid, _ := a["client_id"].(string)
			p.PriorActors = append(p.PriorActors, vectors.Actor{Sub: fmt.Sprint(a["sub"]), ClientID: cid})
		}
	} else {
		p.Agent = vectors.Actor{Sub: str("agent_id"), ClientID: str("client_id")}
	}
	return p
}

func accessTokenFile(keys map[string]key, attacker key) vectors.AccessTokenFile {
	f := vectors.AccessTokenFile{
		Description: "Access tokens as Mandate issues them, and what a downstream verifier must make of each (docs/vectors.md). " +
			"Judge every vector at now with the jwks, issuer, audience, leeway and algorithms given; a valid one yields principal.",
		Issuer: issuer, Audience: "orders_api", Now: now, Leeway: 30, Algorithms: []string{"ES256", "EdDSA"},
		JWKS: publicSet(keys),
	}
	for _, tc := range accessTokenCases() {
		c := tokenClaims()
		c["jti"] = "at-" + tc.name
		if tc.claims != nil {
			tc.claims(c)
		}
		k := keys["mandate-es256"]
		if tc.kid != "" {
			k = keys[tc.kid]
		}
		var tok string
		if tc.raw != nil {
			tok = tc.raw(k, attacker, c)
		} else {
			h := atHeader(k)
			if tc.header != nil {
				tc.header(h)
			}
			tok = signCompact(k, h, c)
		}
		v := vectors.AccessTokenVector{Name: tc.name, Description: tc.description, Token: tok,
			RequiredScopes: tc.required, Valid: tc.err == "", Error: tc.err}
		if v.RequiredScopes == nil {
			v.RequiredScopes = []string{}
		}
		if v.Valid {
			v.Principal = principalOf(c)
		}
		f.Vectors = append(f.Vectors, v)
	}
	return f
}

// ---------------------------------------------------------------------------------------------
// JOSE, by hand

func header(k key) map[string]any {
	return map[string]any{"alg": k.alg, "typ": "eie+jwt", "kid": k.kid}
}
func atHeader(k key) map[string]any {
	return map[string]any{"alg": k.alg, "typ": "at+jwt", "kid": k.kid}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// segment encodes v as JSON without HTML escaping, so what a vector's claims say is what is
// signed.
func segment(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		log.Fatal(err)
	}
	return b64(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

// hmacWithPublicKey is the classic algorithm-confusion forgery: HS256 keyed with the bytes of
// the victim's public JWK, which a verifier that takes alg from the header would accept.
func hmacWithPublicKey(k key, typ string, c map[string]any) string {
	pub, _ := json.Marshal(publicJWK(k))
	input := segment(map[string]any{"alg": "HS256", "typ": typ, "kid": k.kid}) + "." + segment(c)
	m := hmac.New(sha256.New, pub)
	m.Write([]byte(input))
	return input + "." + b64(m.Sum(nil))
}

func compact(h, c map[string]any, sig []byte) string {
	return segment(h) + "." + segment(c) + "." + b64(sig)
}

func signCompact(k key, h, c map[string]any) string {
	input := segment(h) + "." + segment(c)
	return input + "." + b64(sign(k, input))
}

func sign(k key, input string) []byte {
	switch k.alg {
	case "ES256", "ES384":
		var digest []byte
		size := 32
		if k.alg == "ES256" {
			d := sha256.Sum256([]byte(input))
			digest = d[:]
		} else {
			d := sha512.Sum384([]byte(input))
			digest, size = d[:], 48
		}
		r, s, err := ecdsa.Sign(rand.Reader, k.priv.(*ecdsa.PrivateKey), digest)
		if err != nil {
			log.Fatal(err)
		}
		out := make([]byte, 2*size)
		r.FillBytes(out[:size])
		s.FillBytes(out[size:])
		return out
	case "EdDSA":
		return ed25519.Sign(k.priv.(ed25519.PrivateKey), []byte(input))
	case "PS256", "RS256":
		d := sha256.Sum256([]byte(input))
		var sig []byte
		var err error
		if k.alg == "PS256" {
			sig, err = rsa.SignPSS(rand.Reader, k.priv.(*rsa.PrivateKey), crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			sig, err = rsa.SignPKCS1v15(rand.Reader, k.priv.(*rsa.PrivateKey), crypto.SHA256, d[:])
		}
		if err != nil {
			log.Fatal(err)
		}
		return sig
	}
	log.Fatalf("no signer for %s", k.alg)
	return nil
}

// ---------------------------------------------------------------------------------------------
// Keys

func genKey(kid, alg string) key {
	var priv crypto.Signer
	var err error
	switch alg {
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case "PS256", "RS256":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		log.Fatal(err)
	}
	return key{kid: kid, alg: alg, priv: priv}
}

// loadKeys reads the private keys kept in file's member, generating the ones missing.
func loadKeys(file, member string, want []struct{ kid, alg string }) map[string]key {
	have := map[string]key{}
	if raw, err := os.ReadFile(file); err == nil {
		var doc map[string]json.RawMessage
		if json.Unmarshal(raw, &doc) == nil && doc[member] != nil {
			set, err := jwk.Parse(doc[member])
			if err != nil {
				log.Fatalf("%s: %s: %v", file, member, err)
			}
			for i := range set.Len() {
				k, _ := set.Key(i)
				kid, _ := k.KeyID()
				a, _ := k.Algorithm()
				var priv any
				if err := jwk.Export(k, &priv); err != nil {
					log.Fatal(err)
				}
				if s, ok := priv.(crypto.Signer); ok {
					have[kid] = key{kid: kid, alg: a.String(), priv: s}
				}
			}
		}
	}
	out := map[string]key{}
	for _, w := range want {
		if k, ok := have[w.kid]; ok && k.alg == w.alg {
			out[w.kid] = k
			continue
		}
		out[w.kid] = genKey(w.kid, w.alg)
	}
	return out
}

func jwkOf(k key, private bool) jwk.Key {
	var raw any = k.priv.Public()
	if private {
		raw = k.priv
	}
	j, err := jwk.Import(raw)
	if err != nil {
		log.Fatal(err)
	}
	_ = j.Set(jwk.KeyIDKey, k.kid)
	_ = j.Set(jwk.AlgorithmKey, k.alg)
	_ = j.Set(jwk.KeyUsageKey, "sig")
	return j
}

func publicJWK(k key) jwk.Key { return jwkOf(k, false) }

func sortedKeys(keys map[string]key) []key {
	var out []key
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		out = append(out, keys[kid])
	}
	return out
}

func publicSet(keys map[string]key) json.RawMessage  { return keySet(keys, false) }
func privateSet(keys map[string]key) json.RawMessage { return keySet(keys, true) }

func keySet(keys map[string]key, private bool) json.RawMessage {
	set := jwk.NewSet()
	for _, k := range sortedKeys(keys) {
		_ = set.AddKey(jwkOf(k, private))
	}
	b, err := json.Marshal(set)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

// ---------------------------------------------------------------------------------------------
// Small helpers

// set puts v at a dotted path of c (nil deletes), creating objects on the way.
func set(c map[string]any, path string, v any) {
	parts := strings.Split(path, ".")
	m := c
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	last := parts[len(parts)-1]
	if v == nil {
		delete(m, last)
		return
	}
	m[last] = v
}

func clone(c map[string]any) map[string]any {
	b, _ := json.Marshal(c)
	var out map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	_ = dec.Decode(&out)
	return out
}

func writeJSON(path string, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		log.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
