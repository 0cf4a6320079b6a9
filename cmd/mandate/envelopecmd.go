package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
)

// runEnvelope is `mandate envelope keygen|mint`: a developer's way to act as an MCP server
// from a shell (the quick start). Real MCP servers use the envelope package as their SDK.
func runEnvelope(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 0 && isHelp(args[0]) {
		printGroup(stdout, "envelope", [][2]string{
			{"keygen", "make an envelope signing key pair: the private JWK to a file, the public JWK Set to stdout"},
			{"mint", "sign an envelope (prints the compact JWS) as an MCP server would"},
		})
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("envelope: say keygen or mint (mandate envelope --help)")
	}
	switch args[0] {
	case "keygen":
		return envelopeKeygen(args[1:], getenv, stdout)
	case "mint":
		return envelopeMint(args[1:], getenv, stdout)
	}
	return usagef("envelope: unknown action %q: keygen or mint", args[0])
}

// envelopeKeygen writes a new P-256 private JWK to --out (mode 0600) and prints the public
// JWK Set to register as the client's jwks.
func envelopeKeygen(args []string, getenv func(string) string, stdout io.Writer) error {
	var out, kid string
	fe := newFlagSet("envelope keygen", stdout)
	fe.describe("Makes a P-256 key pair for signing envelopes: writes the private JWK (mode 0600) and prints\n" +
		"the public JWK Set to register as the client's jwks.")
	fe.string(&out, "out", "", "mcp-key.json", "where to write the private key (a JWK, mode 0600)")
	fe.string(&kid, "kid", "", "", "key id (default: the key's RFC 7638 thumbprint)")
	if err := fe.parse(args, getenv); err != nil {
		return err
	}
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	priv, err := jwk.Import(raw)
	if err != nil {
		return err
	}
	if kid == "" {
		tp, err := priv.Thumbprint(cryptoSHA256)
		if err != nil {
			return err
		}
		kid = b64url(tp)
	}
	_ = priv.Set(jwk.KeyIDKey, kid)
	_ = priv.Set(jwk.AlgorithmKey, "ES256")
	b, err := json.Marshal(priv)
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, append(b, '\n'), 0o600); err != nil {
		return err
	}
	pub, err := priv.PublicKey()
	if err != nil {
		return err
	}
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	b, err = json.Marshal(set)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// envelopeFlags are the identity and delegation an envelope carries: the flags `envelope
// mint` and `explain` share, so asking "would alice's agent get orders:write?" uses the very
// flags that mint alice's envelope.
type envelopeFlags struct {
	issuer, client, sub, tenant, actorType, agent, session, trace, scopes, mode, allowed string
	ttl                                                                                  time.Duration
}

func (ef *envelopeFlags) bind(fe *flagEnv) {
	fe.string(&ef.issuer, "issuer", "MANDATE_ISSUER", "http://localhost:8080", "Mandate's issuer URL (the envelope's aud)")
	fe.string(&ef.client, "client", "", "", "the MCP server's client_id (iss and agent.client_id)")
	fe.string(&ef.client, "client-id", "", "", "same as --client")
	fe.string(&ef.sub, "sub", "", "", "actor.sub: the user (or service) acted for")
	fe.string(&ef.tenant, "tenant", "", "", "actor.tenant")
	fe.string(&ef.actorType, "actor-type", "", envelope.ActorUser, "actor.type: user or service")
	fe.string(&ef.agent, "agent", "", "", "agent.id: the acting AI agent")
	fe.string(&ef.session, "session", "", "", "session.id (default: generated)")
	fe.string(&ef.trace, "trace", "", "", "session.trace_id (default: generated)")
	fe.string(&ef.scopes, "scopes", "", "", "authorization.scopes, space-separated")
	fe.string(&ef.mode, "mode", "", envelope.ModeOnBehalfOf, "delegation.mode: on_behalf_of, service_identity or restricted_user")
	fe.string(&ef.allowed, "allowed", "", "", "delegation.allowed audiences, space-separated (empty: any the grant covers)")
	fe.duration(&ef.ttl, "ttl", "", 60*time.Second, "envelope lifetime")
}

// check says which required flag is missing.
func (ef *envelopeFlags) check(cmd string) error {
	for _, f := range []struct{ name, v string }{{"client", ef.client}, {"sub", ef.sub}, {"tenant", ef.tenant}, {"agent", ef.agent}} {
		if f.v == "" {
			return usagef("%s: --%s is required", cmd, f.name)
		}
	}
	return nil
}

// claims is the envelope the flags describe, made at iat.
func (ef *envelopeFlags) claims(iat time.Time) envelope.Claims {
	session, trace := ef.session, ef.trace
	if session == "" {
		session = "sess_" + randomHex(8)
	}
	if trace == "" {
		trace = randomHex(16)
	}
	return envelope.Claims{
		Issuer:        ef.client,
		Audience:      envelope.Audience{ef.issuer},
		IssuedAt:      iat,
		ExpiresAt:     iat.Add(ef.ttl),
		Actor:         envelope.Actor{Type: ef.actorType, Sub: ef.sub, Tenant: ef.tenant},
		Agent:         envelope.Agent{ID: ef.agent, ClientID: ef.client},
		Session:       envelope.Session{ID: session, TraceID: trace},
		Authorization: envelope.Authorization{Scopes: strings.Fields(ef.scopes), Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: ef.mode, Allowed: strings.Fields(ef.allowed)},
	}
}

// signerFrom reads the private JWK `mandate envelope keygen` wrote.
func signerFrom(cmd, keyFile string) (*envelope.Signer, error) {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, usagef("%s: --key: %v", cmd, err)
	}
	key, err := jwk.ParseKey(b)
	if err != nil {
		return nil, usagef("%s: --key %s is not a JWK: %v", cmd, keyFile, err)
	}
	kid, _ := key.KeyID()
	return envelope.NewSigner(key, kid)
}

// envelopeMint signs one envelope with the key keygen wrote and prints it.
func envelopeMint(args []string, getenv func(string) string, stdout io.Writer) error {
	var keyFile string
	var ef envelopeFlags
	fe := newFlagSet("envelope mint", stdout)
	fe.describe("Signs an Execution Identity Envelope with a key from mandate envelope keygen and prints it.")
	fe.string(&keyFile, "key", "", "mcp-key.json", "the private JWK from `mandate envelope keygen`")
	ef.bind(fe)
	if err := fe.parse(args, getenv); err != nil {
		return err
	}
	if err := ef.check("envelope mint"); err != nil {
		return err
	}
	signer, err := signerFrom("envelope mint", keyFile)
	if err != nil {
		return err
	}
	tok, err := signer.Sign(ef.claims(time.Now()))
	if err != nil {
		return usageError{err.Error()}
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
