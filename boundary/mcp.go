package boundary

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// How the identity reaches a go-sdk tool handler: the streamable HTTP handler runs a
// stateful session's handlers on a context derived from the request that *opened* the
// session, not from each POST. Values put in a later request's context therefore never
// reach the tool. What the SDK does pass per request is RequestExtra.TokenInfo (taken
// from the request context through auth.TokenInfoFromContext) and RequestExtra.Header.
// So the boundary hands the identity over in TokenInfo.Extra, and a receiving middleware
// moves it into the handler's context for every request. TokenInfo.UserID also turns on
// the SDK's session-hijacking check: one user's session cannot be driven with another
// user's token. The header the SDK passes on is the copy with Authorization removed.

// tokenInfoExtraKey is where the identity travels inside auth.TokenInfo.Extra.
const tokenInfoExtraKey = "mandate.boundary.identity"

// MCPHandler serves server over the streamable HTTP transport behind the boundary: every
// request is authenticated, the token removed, and each tool handler's context carries
// the identity of the request that called it (FromContext).
func (b *Boundary) MCPHandler(server *mcp.Server, opts *mcp.StreamableHTTPOptions) http.Handler {
	server.AddReceivingMiddleware(MCPMiddleware)
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, opts)
	return b.authenticate(withTokenInfo(stripToken(h), b.cfg.Leeway))
}

// withTokenInfo stores the identity as the go-sdk's TokenInfo. auth.RequireBearerToken is
// the SDK's only way to set it; it runs while the (already verified) header is still
// there, with a verifier that only looks the identity up, and stripToken runs after it.
// Its own expiry check gets the boundary's leeway: without it, a token the boundary
// accepted within the leeway would be refused with a bare 401 and no Bearer challenge.
func withTokenInfo(next http.Handler, leeway time.Duration) http.Handler {
	verify := func(ctx context.Context, _ string, _ *http.Request) (*auth.TokenInfo, error) {
		id, ok := FromContext(ctx)
		if !ok {
			return nil, auth.ErrInvalidToken
		}
		return tokenInfo(id), nil
	}
	return auth.RequireBearerToken(verify, &auth.RequireBearerTokenOptions{ClockSkew: leeway})(next)
}

func tokenInfo(id *Identity) *auth.TokenInfo {
	if id == nil {
		return nil
	}
	return &auth.TokenInfo{
		Scopes:     id.Scopes,
		Expiration: id.ExpiresAt,
		// The SDK binds a session to this value: tenant and user together, so two
		// tenants' "user_1" are different users.
		UserID: sessionUser(id),
		Extra:  map[string]any{tokenInfoExtraKey: id},
	}
}

// sessionUser is the actor as one string no other actor can produce: a JSON array, where
// joining with "/" made tenant "a/b" with user "c" the same as tenant "a" with user "b/c".
func sessionUser(id *Identity) string {
	b, _ := json.Marshal([]string{id.Actor.Type, id.Actor.Tenant, id.Actor.Sub}) // strings always marshal
	return string(b)
}

// MCPMiddleware is a go-sdk receiving middleware (Server.AddReceivingMiddleware) that sets
// the identity of the current request in the handler context. A request that carries no
// identity gets none, even if the session was opened by one: an identity never outlives
// the request that proved it. MCPHandler installs it.
func MCPMiddleware(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		var id *Identity
		if extra := req.GetExtra(); extra != nil && extra.TokenInfo != nil {
			id, _ = extra.TokenInfo.Extra[tokenInfoExtraKey].(*Identity)
		}
		return next(WithIdentity(ctx, id), method, req)
	}
}
