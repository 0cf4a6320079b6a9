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

// envelopeMint signs one envelope with the key keygen wrote and prints it.
func envelopeMint(args []string, getenv func(string) string, stdout io.Writer) error {
	var keyFile, issuer, client, sub, tenant, actorType, agent, session, trace, scopes, mode, allowed string
	var ttl time.Duration
	fe := newFlagSet("envelope mint", stdout)
	fe.describe("Signs an Execution Identity Envelope with a key from mandate envelope keygen and prints it.")
	fe.string(&keyFile, "key", "", "mcp-key.json", "the private JWK from `mandate envelope keygen`")
	fe.string(&issuer, "issuer", "MANDATE_ISSUER", "http://localhost:8080", "Mandate's issuer URL (the envelope's aud)")
	fe.string(&client, "client-id", "", "", "the MCP server's client_id (iss and agent.client_id)")
	fe.string(&sub, "sub", "", "", "actor.sub: the user (or service) acted for")
	fe.string(&tenant, "tenant", "", "", "actor.tenant")
	fe.string(&actorType, "actor-type", "", envelope.ActorUser, "actor.type: user or service")
	fe.string(&agent, "agent", "", "", "agent.id: the acting AI agent")
	fe.string(&session, "session", "", "", "session.id (default: generated)")
	fe.string(&trace, "trace", "", "", "session.trace_id (default: generated)")
	fe.string(&scopes, "scopes", "", "", "authorization.scopes, space-separated")
	fe.string(&mode, "mode", "", envelope.ModeOnBehalfOf, "delegation.mode: on_behalf_of, service_identity or restricted_user")
	fe.string(&allowed, "allowed", "", "", "delegation.allowed audiences, space-separated (empty: any the grant covers)")
	fe.duration(&ttl, "ttl", "", 60*time.Second, "envelope lifetime")
	if err := fe.parse(args, getenv); err != nil {
		return err
	}
	for name, v := range map[string]string{"client-id": client, "sub": sub, "tenant": tenant, "agent": agent} {
		if v == "" {
			return usagef("envelope mint: --%s is required", name)
		}
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return usagef("envelope mint: --key: %v", err)
	}
	key, err := jwk.ParseKey(b)
	if err != nil {
		return usagef("envelope mint: --key %s is not a JWK: %v", keyFile, err)
	}
	kid, _ := key.KeyID()
	signer, err := envelope.NewSigner(key, kid)
	if err != nil {
		return err
	}
	if session == "" {
		session = "sess_" + randomHex(8)
	}
	if trace == "" {
		trace = randomHex(16)
	}
	now := time.Now()
	tok, err := signer.Sign(envelope.Claims{
		Issuer:        client,
		Audience:      envelope.Audience{issuer},
		IssuedAt:      now,
		ExpiresAt:     now.Add(ttl),
		Actor:         envelope.Actor{Type: actorType, Sub: sub, Tenant: tenant},
		Agent:         envelope.Agent{ID: agent, ClientID: client},
		Session:       envelope.Session{ID: session, TraceID: trace},
		Authorization: envelope.Authorization{Scopes: strings.Fields(scopes), Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: mode, Allowed: strings.Fields(allowed)},
	})
	if err != nil {
		return usageError{err.Error()}
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
