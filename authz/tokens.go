package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/storage"
)

// ErrInvalidToken is returned by AuthenticateBearer for any token that is not an active
// Mandate-issued token for the admin API; the wrapped text says why, for logs only.
var ErrInvalidToken = errors.New("authz: invalid token")

// tokenState says what a presented token is. claims is set once the signature verified.
type tokenState struct {
	claims *exchange.TokenClaims
	record *storage.TokenState // nil when there is no record
	active bool
	why    string // when not active, for logs
}

// tokenRequest is the part introspection and revocation share (RFC 7662 §2.1, RFC 7009 §2.1):
// the form with its singleton parameters, the client's authentication, the required token
// parameter, and the token's state. On false the error answer has been written, and a
// refusal audited under event unless event is "" (introspection is not an audit event).
func (s *Server) tokenRequest(w http.ResponseWriter, r *http.Request, event string) (clientID string, st *tokenState, ok bool) {
	endpoint := endpointIntrospect
	if event == EventRevoke {
		endpoint = endpointRevoke
	}
	att, ok := s.admit(w, r, endpoint)
	if !ok {
		return "", nil, false
	}
	defer att.Done()
	form, err := parseForm(w, r)
	// Until the client is authenticated a refusal is nobody's: counted, not recorded.
	anonymous := func(err error) (string, *tokenState, bool) {
		s.refuseUnauthenticated(&att, r, endpoint, form, err)
		writeError(w, r, s.log, err)
		return "", nil, false
	}
	if err != nil {
		return anonymous(err)
	}
	if err := singletons(form, "token", "token_type_hint", "client_id", "client_secret", "client_assertion", "client_assertion_type"); err != nil {
		return anonymous(err)
	}
	fc, err := s.oauth.AuthenticateClient(r.Context(), r, form)
	if err != nil {
		return anonymous(err)
	}
	refuse := func(err error) (string, *tokenState, bool) {
		if event != "" {
			s.auditDenial(r, event, fc.GetID(), err, nil)
		}
		writeError(w, r, s.log, err)
		return "", nil, false
	}
	token := form.Get("token")
	switch {
	case token == "":
		return refuse(invalidRequest("token is required"))
	case len(token) > maxTokenBytes:
		return refuse(invalidRequest("token is larger than 8 KiB"))
	}
	if st, err = s.inspect(r.Context(), token); err != nil {
		writeError(w, r, s.log, err)
		return "", nil, false
	}
	return fc.GetID(), st, true
}

// inspect verifies a token Mandate issued and reads its state: signature and typ with the
// keys, then iss and exp, then the issued-token record (revoked? its grant revoked or gone?
// its client deleted, or disabled now or since?). A storage fault is an error; everything
// else is a verdict.
func (s *Server) inspect(ctx context.Context, token string) (*tokenState, error) {
	if len(token) > maxTokenBytes {
		return &tokenState{why: "too large"}, nil
	}
	payload, _, err := s.keys.VerifyFresh(ctx, token)
	switch {
	case errors.Is(err, keys.ErrUnavailable):
		// A token another replica signed must not be called inactive (or be left unrevoked)
		// because this replica could not load that replica's key.
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	case err != nil:
		return &tokenState{why: err.Error()}, nil
	}
	var cl exchange.TokenClaims
	if err := json.Unmarshal(payload, &cl); err != nil {
		return &tokenState{why: "claims do not decode"}, nil
	}
	st := &tokenState{claims: &cl}
	switch {
	case cl.Issuer != s.issuer:
		st.why = "foreign issuer"
		return st, nil
	case cl.JTI == "":
		st.why = "no jti"
		return st, nil
	}
	rec, err := s.store.GetTokenState(ctx, cl.JTI, time.Unix(cl.IssuedAt, 0))
	switch {
	case errors.Is(err, storage.ErrNotFound):
		st.why = "no issuance record"
		return st, nil
	case err != nil:
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	}
	st.record = rec
	now := s.now()
	switch {
	case !now.Before(rec.ExpiresAt) || now.Unix() >= cl.ExpiresAt:
		st.why = "expired"
	case !rec.RevokedAt.IsZero():
		st.why = "revoked"
	case !rec.GrantRevokedAt.IsZero():
		st.why = "grant revoked"
	case rec.GrantMissing:
		st.why = "grant gone"
	case rec.ClientMissing:
		st.why = "client deleted"
	case rec.ClientCreatedAt.After(rec.IssuedAt):
		st.why = "client deleted (its id was taken again)"
	case rec.ClientDisabled:
		st.why = "client disabled"
	case !rec.ClientDisabledAt.IsZero() && !rec.IssuedAt.After(rec.ClientDisabledAt):
		st.why = "client disabled since the token was issued"
	case rec.ClientID != cl.ClientID:
		st.why = "record does not match"
	default:
		st.active = true
	}
	return st, nil
}

// AuthenticateBearer verifies an admin API bearer token: a token Mandate issued through
// client_credentials (aud = the issuer, typ at+jwt), unexpired, not revoked, whose client
// still exists and is enabled. It returns the client and the token's scopes; deciding which
// scope an admin call needs is the caller's. Errors wrap ErrInvalidToken, or ErrUnavailable
// when storage did not answer.
func (s *Server) AuthenticateBearer(ctx context.Context, token string) (clientID string, scopes []string, err error) {
	st, err := s.inspect(ctx, token)
	if err != nil {
		return "", nil, err
	}
	if !st.active {
		return "", nil, fmt.Errorf("%w: %s", ErrInvalidToken, st.why)
	}
	cl := st.claims
	if cl.Audience != s.issuer || cl.Subject != cl.ClientID || cl.Act != nil {
		return "", nil, fmt.Errorf("%w: not a token for the admin API", ErrInvalidToken)
	}
	c, err := s.exchange.Catalog().Client(ctx, cl.ClientID)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return "", nil, fmt.Errorf("%w: client gone", ErrInvalidToken)
	case err != nil:
		return "", nil, fmt.Errorf("%w: %w", errUnavailable, err)
	case c.Disabled:
		return "", nil, fmt.Errorf("%w: client disabled", ErrInvalidToken)
	}
	// Only scopes the client still holds count: taking mandate:admin away from a client takes
	// it from the tokens it already has, as disabling it does.
	var held []string
	for _, sc := range strings.Fields(cl.Scope) {
		if slices.Contains(c.AllowedScopes, sc) {
			held = append(held, sc)
		}
	}
	return cl.ClientID, held, nil
}
