package exchange

import (
	"slices"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/storage"
)

// modeListed applies an audience's or grant's mode list. An empty list allows on_behalf_of
// and service_identity but never restricted_user: that mode hides the agent from the
// downstream API, so SPEC §5 allows it only where it is listed explicitly.
func modeListed(modes []string, mode string) bool {
	if len(modes) == 0 {
		return mode == envelope.ModeOnBehalfOf || mode == envelope.ModeServiceIdentity
	}
	return slices.Contains(modes, mode)
}

// intersect returns the members of a that are in b and, when narrow is non-empty, in narrow
// (an empty narrow list means no narrowing: the client's allowed_scopes for user actors).
// Order follows a; duplicates are dropped.
func intersect(a, b, narrow []string) []string {
	var out []string
	for _, s := range a {
		if slices.Contains(b, s) && (len(narrow) == 0 || slices.Contains(narrow, s)) && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// covers reports whether grant g covers the audience and the mode (SPEC §4: "one of them
// covers this audience and mode").
func covers(g *storage.Grant, audience, mode string) bool {
	return slices.Contains(g.Audiences, audience) && modeListed(g.Modes, mode)
}

// grantScopes is the effective set under grant g: envelope ∩ grant ∩ audience ∩ client (an
// empty client list does not narrow, for user actors).
func grantScopes(g *storage.Grant, aud *storage.Audience, envScopes, clientScopes []string) []string {
	return intersect(envScopes, intersect(g.Scopes, aud.Scopes, nil), clientScopes)
}

// serviceScopes is the effective set of a service actor: envelope ∩ audience ∩ client, where
// the client's allowed_scopes are the whole permission (empty allows none).
func serviceScopes(env *envelope.Claims, aud *storage.Audience, c *storage.Client) []string {
	return intersect(intersect(env.Authorization.Scopes, aud.Scopes, nil), c.AllowedScopes, nil)
}

// pickScopes applies the request to the effective set: requested scopes must all be in it
// and are issued exactly; without a request the whole effective set is issued.
func pickScopes(effective []string, req *Request) ([]string, error) {
	if !req.ScopeGiven || len(req.Scopes) == 0 {
		if len(effective) == 0 {
			return nil, deny(CodeInvalidScope, ReasonNoScope,
				"no scope is allowed by the envelope, grant, audience and client together")
		}
		return effective, nil
	}
	var out []string
	for _, s := range req.Scopes {
		if !slices.Contains(effective, s) {
			return nil, deny(CodeInvalidScope, ReasonScopeNotAllowed, "a requested scope is not allowed")
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// chooseGrant picks, among the active grants, one that covers the audience and mode and
// yields the scopes. Several grants can apply (a "*" grant and a per-user one, say); the
// choice is deterministic: with scopes requested, the first that allows them all; without,
// the one allowing the most scopes, then the one expiring last. When none yields scopes, the
// refusal is the first covering grant's.
func chooseGrant(grants []storage.Grant, aud *storage.Audience, mode string,
	envScopes, clientScopes []string, req *Request) (*storage.Grant, []string, error) {
	var best *storage.Grant
	var bestScopes []string
	var scopeErr error
	for i := range grants {
		g := &grants[i]
		if !covers(g, aud.ID, mode) {
			continue
		}
		scopes, err := pickScopes(grantScopes(g, aud, envScopes, clientScopes), req)
		if err != nil {
			if scopeErr == nil {
				scopeErr = err
			}
			continue
		}
		if req.ScopeGiven && len(req.Scopes) > 0 {
			return g, scopes, nil
		}
		if best == nil || len(scopes) > len(bestScopes) ||
			(len(scopes) == len(bestScopes) && g.ExpiresAt.After(best.ExpiresAt)) {
			best, bestScopes = g, scopes
		}
	}
	switch {
	case best != nil:
		return best, bestScopes, nil
	case scopeErr == nil: // no grant covers: the grant step refuses before this
		return nil, nil, deny(CodeInvalidTarget, ReasonGrantNotCovering,
			"no active delegation grant covers this audience and delegation mode")
	}
	return nil, nil, scopeErr
}
