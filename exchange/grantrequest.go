package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/storage"
)

// Grant requests and consent (SPEC §11): which grants a client may ask a user for, what the
// user is shown, and what an approval, a denial or a user's revocation writes. The rules are
// the exchange's own (tenants, audiences, modes, scopes), applied to the grant being asked
// for instead of to a token; package authz serves the client's endpoints, package consent
// the user's pages, package api the admin's calls.

// Audit events of grant requests and consent.
const (
	EventGrantRequestCreate  = "grant_request.create"
	EventGrantRequestApprove = "grant_request.approve"
	EventGrantRequestDeny    = "grant_request.deny"
	EventConsentRevoke       = "consent.revoke"
)

// Reason codes of grant requests and consent.
const (
	ReasonInvalidGrantRequest  = "invalid_grant_request"
	ReasonAudienceAdminOnly    = "audience_requires_admin_consent"
	ReasonConsentTooLong       = "consent_duration_too_long"
	ReasonGrantRequestNotFound = "grant_request_not_found"
	ReasonGrantRequestExpired  = "grant_request_expired"
	ReasonGrantRequestDecided  = "grant_request_already_decided"
	ReasonGrantRequestChanged  = "grant_request_changed"
	ReasonConsentWrongUser     = "consent_wrong_user"
	ReasonConsentWrongTenant   = "consent_wrong_tenant"
	ReasonGrantNotYours        = "grant_not_yours"
	ReasonGrantRequestCreated  = "grant_request_created"
	ReasonGrantRequestApproved = "grant_request_approved"
	ReasonGrantRequestDenied   = "grant_request_denied"
	ReasonGrantRevokedByUser   = "grant_revoked_by_user"
	ReasonGrantAlreadyRevoked  = "grant_already_revoked"
)

const (
	// DefaultGrantRequestLifetime is how long a user has to decide a grant request.
	DefaultGrantRequestLifetime = 10 * time.Minute
	// GrantRequestPollInterval is the interval (RFC 8628 §3.2) clients are told to poll at.
	GrantRequestPollInterval = 5 * time.Second
)

// Limits on what a grant request may carry.
const (
	maxRequestAudiences = 16
	maxRequestScopes    = 64
	maxPurposeChars     = 500
	maxIDChars          = 256
)

// GrantRequestInput is a client asking for a grant.
type GrantRequestInput struct {
	Client    *storage.Client
	Tenant    string
	Subject   string
	AgentID   string
	Audiences []string
	Scopes    []string
	Modes     []string // empty: on_behalf_of
	Duration  time.Duration
	Purpose   string
	// DurationGiven says whether the client named a duration (else the audiences' limit).
	DurationGiven bool
	RemoteAddr    string
}

// CreateGrantRequest checks in under the client's and the audiences' rules and stores it,
// pending. A refusal is an *Error carrying the code the same check has at the token endpoint
// (SPEC §4); every outcome is audited.
func (s *Service) CreateGrantRequest(ctx context.Context, in GrantRequestInput) (*storage.GrantRequest, error) {
	now := s.now()
	rec := &storage.AuditRecord{
		Event: EventGrantRequestCreate, ClientID: in.Client.ID, RemoteAddr: in.RemoteAddr,
		Tenant: clip(in.Tenant), ActorSub: clip(in.Subject), AgentID: clip(in.AgentID),
		RequestedScopes: clipList(in.Scopes),
	}
	if len(in.Audiences) > 0 {
		rec.Audience = clip(in.Audiences[0])
	}
	r, err := s.checkGrantRequest(ctx, now, in)
	if err != nil {
		s.audit(ctx, now, rec, err)
		return nil, err
	}
	rec.ID, rec.Time = storage.NewID("evt"), now
	rec.Outcome, rec.Reason = storage.OutcomeGranted, ReasonGrantRequestCreated
	rec.Detail = requestDetail(r, "")
	err = s.store.InTx(ctx, func(tx storage.Store) error {
		if err := tx.CreateGrantRequest(ctx, r); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, rec)
	})
	if err != nil {
		return nil, unavailable(err)
	}
	return r, nil
}

func (s *Service) checkGrantRequest(ctx context.Context, now time.Time, in GrantRequestInput) (*storage.GrantRequest, error) {
	c := in.Client
	if !slices.Contains(c.GrantTypes, GrantTypeTokenExchange) {
		return nil, deny(CodeUnauthorizedClient, ReasonGrantTypeNotAllowed,
			"the client is not allowed to use the token exchange grant")
	}
	bad := func(description string) error {
		return deny(CodeInvalidRequest, ReasonInvalidGrantRequest, description)
	}
	modes := in.Modes
	if len(modes) == 0 {
		modes = []string{envelope.ModeOnBehalfOf}
	}
	switch {
	case in.Tenant == "" || utf8.RuneCountInString(in.Tenant) > maxIDChars:
		return nil, bad("tenant is required (at most 256 characters)")
	case in.Subject == "" || utf8.RuneCountInString(in.Subject) > maxIDChars:
		return nil, bad("subject is required (at most 256 characters)")
	case in.Subject == storage.AnySubject:
		return nil, bad("subject must name one user; only an admin can grant for every user")
	case utf8.RuneCountInString(in.AgentID) > maxIDChars:
		return nil, bad("agent_id is longer than 256 characters")
	case len(in.Audiences) == 0 || len(in.Audiences) > maxRequestAudiences:
		return nil, bad("audiences must name 1 to 16 audiences")
	case len(in.Scopes) == 0 || len(in.Scopes) > maxRequestScopes:
		return nil, bad("scopes must name 1 to 64 scopes")
	case utf8.RuneCountInString(in.Purpose) > maxPurposeChars:
		return nil, bad("purpose is longer than 500 characters")
	case in.DurationGiven && in.Duration < time.Second:
		return nil, bad("duration must be a positive number of seconds")
	}
	for _, sc := range in.Scopes {
		if !validScope(sc) {
			return nil, bad("a scope is not a valid scope token")
		}
	}
	for _, m := range modes {
		if m != envelope.ModeOnBehalfOf && m != envelope.ModeServiceIdentity && m != envelope.ModeRestrictedUser {
			return nil, bad("modes must be on_behalf_of, service_identity or restricted_user")
		}
	}
	if len(c.AllowedTenants) > 0 && !slices.Contains(c.AllowedTenants, in.Tenant) {
		return nil, deny(CodeInvalidRequest, ReasonTenantNotAllowed, "the tenant is not allowed for this client")
	}
	auds, err := s.requestAudiences(ctx, c, in.Audiences)
	if err != nil {
		return nil, err
	}
	for _, a := range auds {
		if !a.AllowsUserConsent() {
			return nil, deny(CodeInvalidTarget, ReasonAudienceAdminOnly,
				"users cannot grant access to this audience themselves; an admin must create the grant")
		}
	}
	for _, m := range modes {
		for _, a := range auds {
			if !modeListed(a.AllowedModes, m) {
				return nil, deny(CodeInvalidRequest, ReasonModeNotForAudience,
					"a delegation mode is not allowed by one of the audiences")
			}
		}
		if len(c.AllowedModes) > 0 && !slices.Contains(c.AllowedModes, m) {
			return nil, deny(CodeInvalidRequest, ReasonModeNotForClient,
				"a delegation mode is not allowed for this client")
		}
	}
	for _, sc := range in.Scopes {
		defined := slices.ContainsFunc(auds, func(a *storage.Audience) bool { return slices.Contains(a.Scopes, sc) })
		if !defined || (len(c.AllowedScopes) > 0 && !slices.Contains(c.AllowedScopes, sc)) {
			return nil, deny(CodeInvalidScope, ReasonScopeNotRequestable,
				"a requested scope is not defined by the audiences or not allowed for this client")
		}
	}
	limit := auds[0].ConsentDurationLimit()
	for _, a := range auds[1:] {
		limit = min(limit, a.ConsentDurationLimit())
	}
	duration := in.Duration.Truncate(time.Second)
	if !in.DurationGiven {
		duration = limit
	}
	if duration > limit {
		return nil, deny(CodeInvalidRequest, ReasonConsentTooLong, fmt.Sprintf(
			"duration is longer than the audiences allow users to grant (%d seconds)", int64(limit/time.Second)))
	}
	return &storage.GrantRequest{
		ID: storage.NewID("gr"), ClientID: c.ID, Tenant: in.Tenant, Subject: in.Subject,
		AgentID: in.AgentID, Audiences: dedupe(in.Audiences), Scopes: dedupe(in.Scopes),
		Modes: dedupe(modes), Duration: duration, Purpose: strings.TrimSpace(in.Purpose),
		State: storage.GrantRequestPending, CreatedAt: now, ExpiresAt: now.Add(s.cfg.GrantRequestLifetime),
	}, nil
}

// requestAudiences resolves the requested audiences under the client's allowed_audiences.
func (s *Service) requestAudiences(ctx context.Context, c *storage.Client, ids []string) ([]*storage.Audience, error) {
	var out []*storage.Audience
	for _, id := range ids {
		a, err := s.catalog.Audience(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, deny(CodeInvalidTarget, ReasonUnknownAudience, "an audience is not registered")
		} else if err != nil {
			return nil, unavailable(err)
		}
		if len(c.AllowedAudiences) > 0 && !slices.Contains(c.AllowedAudiences, a.ID) {
			return nil, deny(CodeInvalidTarget, ReasonAudienceNotForClient, "an audience is not allowed for this client")
		}
		out = append(out, a)
	}
	return out, nil
}

// ClientGrantRequest returns the request id of client c: the one a client polls. A request of
// another client is not found, as an unknown id is.
func (s *Service) ClientGrantRequest(ctx context.Context, c *storage.Client, id string) (*storage.GrantRequest, error) {
	r, err := s.store.GetGrantRequest(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound) || (err == nil && r.ClientID != c.ID):
		return nil, deny(CodeInvalidRequest, ReasonGrantRequestNotFound, "no such grant request for this client")
	case err != nil:
		return nil, unavailable(err)
	}
	return r, nil
}

// ConsentLine is one line of what the consent page shows: a label and its value.
type ConsentLine struct {
	Label string
	Value string
}

// ConsentView is what a user is asked to approve, in plain words. Its Text is exactly what
// the page shows, and what the consent record keeps.
type ConsentView struct {
	Request *storage.GrantRequest
	Title   string
	Lines   []ConsentLine
}

// Text is the view as plain text: the title, then one "Label: value" line each.
func (v *ConsentView) Text() string {
	var b strings.Builder
	b.WriteString(v.Title)
	for _, l := range v.Lines {
		b.WriteString("\n" + l.Label + ": " + l.Value)
	}
	return b.String()
}

// ModeText says what a delegation mode means, for the person granting it.
func ModeText(mode string) string {
	switch mode {
	case envelope.ModeOnBehalfOf:
		return "on your behalf: the service sees both you and the agent acting for you"
	case envelope.ModeServiceIdentity:
		return "as the application itself: the service sees the application, with your account noted"
	case envelope.ModeRestrictedUser:
		return "as you: the service sees only you, not the agent (access lasts at most a minute at a time)"
	}
	return mode
}

// DurationText is a duration in the largest whole unit that fits.
func DurationText(d time.Duration) string {
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d >= 24*time.Hour && d%(24*time.Hour) == 0:
		return plural(int64(d/(24*time.Hour)), "day")
	case d >= time.Hour && d%time.Hour == 0:
		return plural(int64(d/time.Hour), "hour")
	case d >= time.Minute && d%time.Minute == 0:
		return plural(int64(d/time.Minute), "minute")
	}
	return plural(int64(d/time.Second), "second")
}

// Describe builds what the consent page shows for r from the records as they are now: the
// client's and the audiences' names. A record that is gone makes the request unfit to
// approve (grant_request_changed).
func (s *Service) Describe(ctx context.Context, r *storage.GrantRequest) (*ConsentView, error) {
	c, err := s.store.GetClient(ctx, r.ClientID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, deny(CodeInvalidRequest, ReasonGrantRequestChanged, "the application that asked no longer exists")
	} else if err != nil {
		return nil, unavailable(err)
	}
	app := c.ID
	if c.Name != "" {
		app = c.Name + " (" + c.ID + ")"
	}
	var apis []string
	for _, id := range r.Audiences {
		a, err := s.store.GetAudience(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, deny(CodeInvalidRequest, ReasonGrantRequestChanged, "a service the request names no longer exists")
		} else if err != nil {
			return nil, unavailable(err)
		}
		if a.Name != "" {
			apis = append(apis, a.Name+" ("+a.ID+")")
		} else {
			apis = append(apis, a.ID)
		}
	}
	agent := "any agent of this application"
	if r.AgentID != "" {
		agent = r.AgentID
	}
	var modes []string
	for _, m := range r.Modes {
		modes = append(modes, ModeText(m))
	}
	purpose := r.Purpose
	if purpose == "" {
		purpose = "(none given)"
	}
	return &ConsentView{
		Request: r,
		Title:   app + " asks to act for you",
		Lines: []ConsentLine{
			{"Application", app},
			{"Agent", agent},
			{"For the user", r.Subject + " in " + r.Tenant},
			{"Services", strings.Join(apis, ", ")},
			{"Permissions", strings.Join(r.Scopes, ", ")},
			{"How", strings.Join(modes, "; ")},
			{"For how long", DurationText(r.Duration) + " from approval"},
			{"Purpose", purpose},
		},
	}, nil
}

// User is a person signed in on the consent pages: their sub and tenant at the sign-in
// provider.
type User struct {
	Sub    string
	Tenant string
}

// By is "user:<sub>".
func (u User) By() string { return "user:" + u.Sub }

// Decision closes a grant request: a user's (User set, with ShownText, the consent text the
// page showed) or an admin's (AdminClientID set).
type Decision struct {
	RequestID     string
	Approve       bool
	User          *User
	AdminClientID string
	ShownText     string
	RemoteAddr    string
}

// Decide applies d. A user may decide only a request naming them in their tenant; an
// approval must be of the text the request reads as now. Approving writes the grant
// (created_by user:<sub> or admin:<client_id>), its consent record, the request's decision
// and the audit record in one transaction; of concurrent deciders exactly one wins. Every
// outcome is audited. It returns the decided request and, for an approval, the grant.
func (s *Service) Decide(ctx context.Context, d Decision) (*storage.GrantRequest, *storage.Grant, error) {
	now := s.now().UTC().Truncate(time.Microsecond)
	event := EventGrantRequestDeny
	if d.Approve {
		event = EventGrantRequestApprove
	}
	by := "admin:" + d.AdminClientID
	if d.User != nil {
		by = d.User.By()
	}
	r, err := s.store.GetGrantRequest(ctx, d.RequestID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, deny(CodeInvalidRequest, ReasonGrantRequestNotFound, "no such grant request")
	} else if err != nil {
		return nil, nil, unavailable(err)
	}
	rec := &storage.AuditRecord{
		Event: event, ClientID: r.ClientID, Tenant: r.Tenant, ActorSub: r.Subject, AgentID: r.AgentID,
		RemoteAddr: d.RemoteAddr, RequestedScopes: r.Scopes, Detail: requestDetail(r, by),
	}
	if len(r.Audiences) > 0 {
		rec.Audience = r.Audiences[0]
	}
	refuse := func(err error) (*storage.GrantRequest, *storage.Grant, error) {
		s.audit(ctx, now, rec, err)
		return nil, nil, err
	}
	if u := d.User; u != nil {
		switch {
		case u.Tenant != r.Tenant:
			return refuse(deny(CodeInvalidRequest, ReasonConsentWrongTenant,
				"this request is for a user of another organisation"))
		case u.Sub != r.Subject:
			return refuse(deny(CodeInvalidRequest, ReasonConsentWrongUser,
				"this request is for another user"))
		}
	}
	if err := requestDecidable(r, now); err != nil {
		return refuse(err)
	}
	var grant *storage.Grant
	var consent *storage.ConsentRecord
	if d.Approve {
		view, err := s.Describe(ctx, r)
		if err != nil {
			return refuse(err)
		}
		text := view.Text()
		if d.User != nil {
			for _, id := range r.Audiences {
				if a, err := s.store.GetAudience(ctx, id); err != nil || !a.AllowsUserConsent() {
					return refuse(deny(CodeInvalidTarget, ReasonAudienceAdminOnly,
						"a service no longer lets users grant access themselves"))
				}
			}
			if d.ShownText != text {
				return refuse(deny(CodeInvalidRequest, ReasonGrantRequestChanged,
					"the request reads differently now than when it was shown; review it again"))
			}
		}
		grant = &storage.Grant{
			ID: storage.NewID("grt"), Tenant: r.Tenant, Subject: r.Subject, ClientID: r.ClientID,
			AgentID: r.AgentID, Audiences: r.Audiences, Scopes: r.Scopes, Modes: r.Modes,
			NotBefore: now, ExpiresAt: now.Add(r.Duration), CreatedBy: by, CreatedAt: now,
		}
		consent = &storage.ConsentRecord{
			GrantID: grant.ID, RequestID: r.ID, ApprovedBy: by, ApprovedAt: now,
			RemoteAddr: d.RemoteAddr, Text: text,
		}
		rec.GrantID, rec.GrantedScopes = grant.ID, r.Scopes
	}
	decision := storage.GrantRequestDecision{State: storage.GrantRequestDenied, DecidedBy: by, DecidedAt: now}
	rec.Reason = ReasonGrantRequestDenied
	if d.Approve {
		decision.State, decision.GrantID = storage.GrantRequestApproved, grant.ID
		rec.Reason = ReasonGrantRequestApproved
	}
	rec.ID, rec.Time, rec.Outcome = storage.NewID("evt"), now, storage.OutcomeGranted
	var decided *storage.GrantRequest
	err = s.store.InTx(ctx, func(tx storage.Store) error {
		var err error
		if decided, err = tx.DecideGrantRequest(ctx, r.ID, decision); err != nil {
			return err
		}
		if grant != nil {
			if err := tx.CreateGrant(ctx, grant); err != nil {
				return err
			}
			if err := tx.CreateConsent(ctx, consent); err != nil {
				return err
			}
		}
		return tx.AppendAudit(ctx, rec)
	})
	switch {
	case errors.Is(err, storage.ErrConflict):
		// Another decision won the race, or the request expired meanwhile.
		rec.ID, rec.GrantID, rec.GrantedScopes = "", "", nil
		if cur, gerr := s.store.GetGrantRequest(ctx, r.ID); gerr == nil {
			if derr := requestDecidable(cur, now); derr != nil {
				return refuse(derr)
			}
		}
		return refuse(deny(CodeInvalidRequest, ReasonGrantRequestDecided, "the grant request was already decided"))
	case err != nil:
		return nil, nil, unavailable(err)
	}
	if grant != nil {
		s.catalog.ForgetGrantsOf(grant.Tenant, grant.Subject, grant.ClientID)
	}
	return decided, grant, nil
}

// requestDecidable says why r can no longer be decided at now, if it cannot.
func requestDecidable(r *storage.GrantRequest, now time.Time) error {
	switch r.Status(now) {
	case storage.GrantRequestPending:
		return nil
	case storage.GrantRequestExpired:
		return deny(CodeInvalidRequest, ReasonGrantRequestExpired, "the grant request has expired; ask the application for a new one")
	}
	return deny(CodeInvalidRequest, ReasonGrantRequestDecided, "the grant request was already decided")
}

// RevokeAsUser revokes grant id for u, who must be the one it names (its tenant and subject).
// The revocation and its audit record commit together.
func (s *Service) RevokeAsUser(ctx context.Context, u User, grantID, remoteAddr string) (*storage.Grant, error) {
	now := s.now().UTC().Truncate(time.Microsecond)
	g, err := s.store.GetGrant(ctx, grantID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, unavailable(err)
	}
	rec := &storage.AuditRecord{Event: EventConsentRevoke, ActorSub: u.Sub, Tenant: u.Tenant,
		GrantID: clip(grantID), RemoteAddr: remoteAddr}
	if g == nil || g.Tenant != u.Tenant || g.Subject != u.Sub {
		err := deny(CodeInvalidRequest, ReasonGrantNotYours, "no such grant of yours")
		s.audit(ctx, now, rec, err)
		return nil, err
	}
	rec.ClientID, rec.AgentID = g.ClientID, g.AgentID
	rec.ID, rec.Time, rec.Outcome, rec.Reason = storage.NewID("evt"), now, storage.OutcomeGranted, ReasonGrantRevokedByUser
	var revoked *storage.Grant
	err = s.store.InTx(ctx, func(tx storage.Store) error {
		var err error
		if revoked, err = tx.RevokeGrant(ctx, g.ID, u.By(), "revoked by the user", now); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, rec)
	})
	switch {
	case errors.Is(err, storage.ErrConflict):
		return nil, deny(CodeInvalidRequest, ReasonGrantAlreadyRevoked, "the grant is already revoked")
	case err != nil:
		return nil, unavailable(err)
	}
	s.catalog.ForgetGrantsOf(g.Tenant, g.Subject, g.ClientID)
	return revoked, nil
}

// requestDetail is a grant request's audit detail: what was asked, and who decided.
func requestDetail(r *storage.GrantRequest, by string) []byte {
	d := map[string]any{
		"request_id": r.ID, "audiences": r.Audiences, "scopes": r.Scopes, "modes": r.Modes,
		"duration": int64(r.Duration / time.Second),
	}
	if by != "" {
		d["decided_by"] = by
	}
	b, _ := json.Marshal(d) // strings and numbers always marshal
	return b
}

// validScope is RFC 6749 §3.3's scope-token: printable ASCII without space, " or \.
func validScope(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func dedupe(l []string) []string {
	var out []string
	for _, s := range l {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func clipList(l []string) []string {
	if len(l) > maxRequestScopes {
		l = l[:maxRequestScopes]
	}
	out := make([]string, 0, len(l))
	for _, s := range l {
		out = append(out, clip(s))
	}
	return out
}
