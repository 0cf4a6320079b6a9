// Package storage is Mandate's storage contract: the records it keeps and one interface per
// aggregate. Backends (storage/sqlite, storage/postgres) implement it and prove it with the
// conformance suite in storage/storagetest.
//
// This package is a leaf: it imports nothing of the project and no driver. Times handed to a
// backend come back in UTC with microsecond precision (the precision both backends share).
package storage

import (
	"context"
	"errors"
	"time"
)

var (
	// ErrNotFound: the record asked for does not exist.
	ErrNotFound = errors.New("storage: not found")
	// ErrConflict: the write would break a uniqueness rule (an id already taken, a replay mark
	// already set, a grant already revoked).
	ErrConflict = errors.New("storage: conflict")
	// ErrUnavailable: the backend did not answer, or not within the call's deadline (a held
	// lock, a frozen or unreachable database). Nothing is known to have changed; the caller
	// may retry later.
	ErrUnavailable = errors.New("storage: unavailable")
)

// Store is a whole backend. A Store returned to the function given to InTx is bound to that
// transaction; everything done through it commits or rolls back together.
type Store interface {
	ClientStore
	AudienceStore
	GrantStore
	KeyStore
	ReplayStore
	TokenStore
	AuditStore
	GrantRequestStore
	ConsentStore
	SessionStore
	ChangeFeed
	MarkerStore

	// InTx runs fn in one transaction. fn's error rolls it back and is returned as is.
	// Transactions do not nest: calling InTx on a Store handed to fn runs fn in the same
	// transaction.
	InTx(ctx context.Context, fn func(tx Store) error) error

	// RecordIssuance commits a granted token's audit record, which is also the token's record
	// (GetTokenState reads it by Audit.TokenJTI) and, when ReplayKey is set, the mark that
	// uses up that one-time value: ErrConflict when an issuance already used the key. When Audit.GrantID is set, the grant must still exist unrevoked at commit
	// time, or the call fails with ErrConflict. A failed call writes nothing. It is the token
	// endpoint's hot path: backends write one row in one round trip.
	//
	// Like every call, it must return once ctx is done, whatever it waits for (a pooled
	// connection, a lock, a batch it joined): the server bounds each call with a deadline so
	// a stuck database yields a fast 503, never a hung request. A call that gives up may
	// still commit; it must never report success without having committed.
	RecordIssuance(ctx context.Context, iss Issuance) error
	// RecordIssuances commits several issuances in one transaction (one statement where the
	// backend can): group commit, see package storage/groupcommit. Each row keeps
	// RecordIssuance's rules on its own, and errs[i] is iss[i]'s outcome: nil once committed,
	// ErrConflict for a used replay key or a grant revoked or gone (and then
	// nothing of that row is written), while its neighbours commit. Rows of one call may
	// conflict with each other: the first in iss wins. An error that is not one row's own
	// (the database failed, ctx ended) is every row's, and then none was written. len(errs)
	// is always len(iss).
	RecordIssuances(ctx context.Context, iss []Issuance) (errs []error)
	// ReplayKeyUsed reports whether an issuance has used key (an Issuance.ReplayKey): what
	// RecordIssuance would refuse for that key, asked without writing (explain answers it).
	ReplayKeyUsed(ctx context.Context, key string) (bool, error)

	// Ping reports whether the backend answers.
	Ping(ctx context.Context) error
	// Close releases the backend's resources.
	Close() error
}

// Issuance is what RecordIssuance writes: one audit record, with what only a token has.
type Issuance struct {
	// Audit is the decision (Outcome granted). Its TokenJTI, ClientID, Audience, GrantID and
	// Time are the token's jti, client, audience, grant ("" for none) and issuance time.
	Audit AuditRecord
	// TokenExpiresAt is the token's exp: introspection answers inactive from then on.
	TokenExpiresAt time.Time
	// ReplayKey, when set, is used up by this issuance: no other issuance may use it again
	// while what it guards is live, that is until ReplayExpiresAt (an envelope's exp plus the
	// clock skew allowed). DeleteExpiredReplayMarks frees it after that, never before.
	// Callers namespace it, e.g. "eie|client|jti|audience".
	// Token ids are not one-time values the store checks: they are random (storage.NewID).
	ReplayKey       string
	ReplayExpiresAt time.Time // required with ReplayKey
}

// CheckIssuance says what makes iss unfit for RecordIssuance; backends call it first.
func CheckIssuance(iss *Issuance) error {
	switch {
	case iss.Audit.TokenJTI == "":
		return errors.New("storage: an issuance without a token jti")
	case iss.TokenExpiresAt.IsZero():
		return errors.New("storage: an issuance without a token expiry")
	case iss.Audit.Outcome != OutcomeGranted:
		return errors.New("storage: an issuance of a decision that was not granted")
	case iss.ReplayKey != "" && iss.ReplayExpiresAt.IsZero():
		return errors.New("storage: a replay key without an expiry")
	}
	return nil
}

// Page asks for one page of a list. Limit <= 0 means the backend's default (50); backends cap
// it at 500. Cursor is the NextCursor of the previous page, opaque to callers.
type Page struct {
	Limit  int
	Cursor string
}

// DefaultPageLimit and MaxPageLimit bound list pages.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 500
)

// EffectiveLimit resolves p.Limit against the defaults.
func (p Page) EffectiveLimit() int {
	switch {
	case p.Limit <= 0:
		return DefaultPageLimit
	case p.Limit > MaxPageLimit:
		return MaxPageLimit
	}
	return p.Limit
}

// ErrBadCursor is returned by list calls given a cursor they did not produce.
var ErrBadCursor = errors.New("storage: bad cursor")

// ---------------------------------------------------------------------------------------------
// Clients

// Client is a registered OAuth client of Mandate: an MCP server or an admin/service client.
type Client struct {
	ID                      string
	Name                    string
	TokenEndpointAuthMethod string // client_secret_basic | client_secret_post | private_key_jwt
	// SecretHash is the keyed hash of the current secret (never the secret).
	SecretHash []byte
	// PreviousSecretHash still authenticates until PreviousSecretExpiresAt (rotation grace).
	PreviousSecretHash      []byte
	PreviousSecretExpiresAt time.Time
	JWKS                    []byte // an inline JWK Set (JSON), or nil
	JWKSURI                 string
	GrantTypes              []string
	AllowedTenants          []string
	AllowedAudiences        []string
	AllowedScopes           []string
	AllowedModes            []string
	// ServiceActors are the actor.sub values the client may present with actor.type
	// "service" (SPEC §4, §7); empty: none.
	ServiceActors       []string
	MaxEnvelopeLifetime time.Duration // 0: the default
	MaxTokenTTL         time.Duration // 0: no client limit
	Disabled            bool
	CreatedAt           time.Time
	UpdatedAt           time.Time
	// DisabledAt is when the client was last disabled (zero: never). Its tokens issued
	// before then stay inactive, also once it is enabled again.
	DisabledAt time.Time
}

// ClientStore keeps clients.
type ClientStore interface {
	// CreateClient stores c; ErrConflict when the id is taken.
	CreateClient(ctx context.Context, c *Client) error
	GetClient(ctx context.Context, id string) (*Client, error)
	ListClients(ctx context.Context, p Page) (items []Client, next string, err error)
	// UpdateClient loads the client, calls fn with it inside the transaction, and stores what
	// fn left (UpdatedAt is set by the caller). fn's error aborts and is returned.
	UpdateClient(ctx context.Context, id string, fn func(*Client) error) (*Client, error)
	// DeleteClient removes the client. Its grants stay (GrantStore.RevokeGrantsOfClient):
	// call that after DeleteClient, in the same transaction, so a grant created for the
	// client meanwhile is revoked too.
	DeleteClient(ctx context.Context, id string) error
	// LockEnabledClientsWith returns, in id order, the ids of the enabled clients holding
	// scope in AllowedScopes and grantType in GrantTypes. Inside InTx those clients stay
	// locked until the transaction ends, so a check on the list ("is this the last admin
	// client?") and the change it guards commit as one: of two transactions each removing
	// one of the last two, the second sees the first's change.
	LockEnabledClientsWith(ctx context.Context, scope, grantType string) ([]string, error)
}

// ---------------------------------------------------------------------------------------------
// Audiences

// Audience is a registered downstream API.
type Audience struct {
	ID           string // the token's aud value
	Name         string
	ResourceURIs []string // RFC 8707 resource indicators naming this audience
	Scopes       []string
	AllowedModes []string
	TokenTTL     time.Duration // 0: the default
	// UserConsent says whether users may grant delegation to this audience themselves
	// (ConsentAllowed) or only admins may (ConsentAdminOnly; "" means the same).
	UserConsent string
	// MaxConsentDuration bounds a grant a user gives (0: DefaultMaxConsentDuration).
	MaxConsentDuration time.Duration
	CreatedAt          time.Time
	UpdatedAt          time.Time
}

// Audience.UserConsent values.
const (
	ConsentAllowed   = "allowed"
	ConsentAdminOnly = "admin_only"
)

// DefaultMaxConsentDuration is an audience's MaxConsentDuration when it sets none (SPEC §11).
const DefaultMaxConsentDuration = 30 * 24 * time.Hour

// AllowsUserConsent reports whether users may consent to a on their own.
func (a *Audience) AllowsUserConsent() bool { return a.UserConsent == ConsentAllowed }

// ConsentDurationLimit is the longest grant a user may give for a.
func (a *Audience) ConsentDurationLimit() time.Duration {
	if a.MaxConsentDuration > 0 {
		return a.MaxConsentDuration
	}
	return DefaultMaxConsentDuration
}

// AudienceStore keeps audiences.
type AudienceStore interface {
	// CreateAudience stores a; ErrConflict when the id or one of its resource URIs is taken.
	CreateAudience(ctx context.Context, a *Audience) error
	GetAudience(ctx context.Context, id string) (*Audience, error)
	// GetAudienceByResource finds the audience that registered uri (exact match).
	GetAudienceByResource(ctx context.Context, uri string) (*Audience, error)
	ListAudiences(ctx context.Context, p Page) (items []Audience, next string, err error)
	UpdateAudience(ctx context.Context, id string, fn func(*Audience) error) (*Audience, error)
	DeleteAudience(ctx context.Context, id string) error
}

// ---------------------------------------------------------------------------------------------
// Delegation grants

// AnySubject in Grant.Subject covers every user of the tenant.
const AnySubject = "*"

// Grant status values, as the admin API filters them.
const (
	GrantActive  = "active"
	GrantRevoked = "revoked"
	GrantExpired = "expired"
)

// Grant lets, in Tenant, Subject (or every user) let ClientID (optionally only AgentID) reach
// Audiences with Scopes in Modes between NotBefore and ExpiresAt.
type Grant struct {
	ID           string
	Tenant       string
	Subject      string
	ClientID     string
	AgentID      string // "": any agent
	Audiences    []string
	Scopes       []string
	Modes        []string
	NotBefore    time.Time
	ExpiresAt    time.Time
	CreatedBy    string
	CreatedAt    time.Time
	RevokedAt    time.Time // zero: not revoked
	RevokedBy    string
	RevokeReason string
}

// Status is the grant's status at now.
func (g *Grant) Status(now time.Time) string {
	switch {
	case !g.RevokedAt.IsZero():
		return GrantRevoked
	case !now.Before(g.ExpiresAt):
		return GrantExpired
	}
	return GrantActive
}

// GrantFilter narrows ListGrants; empty fields do not filter. Status is evaluated at Now
// (GrantActive includes grants whose not_before is still ahead).
type GrantFilter struct {
	Tenant   string
	Subject  string
	ClientID string
	Audience string
	Status   string
	Now      time.Time
	Page
}

// GrantQuery asks which grants are in force for one exchange.
type GrantQuery struct {
	Tenant   string
	Subject  string // the user; grants with Subject "*" match too
	ClientID string
	AgentID  string // grants with an empty AgentID match any agent
	Now      time.Time
}

// GrantStore keeps delegation grants. Grants are never edited; they are revoked.
type GrantStore interface {
	// CreateGrant stores g: ErrNotFound when no client has g.ClientID (checked in the
	// statement, against a client being deleted at the same time), ErrConflict when the id
	// is taken.
	CreateGrant(ctx context.Context, g *Grant) error
	GetGrant(ctx context.Context, id string) (*Grant, error)
	ListGrants(ctx context.Context, f GrantFilter) (items []Grant, next string, err error)
	// RevokeGrant marks the grant revoked at `at`. ErrConflict when it already is; ErrNotFound
	// when there is no such grant.
	RevokeGrant(ctx context.Context, id, by, reason string, at time.Time) (*Grant, error)
	// RevokeGrantsOfClient revokes every unrevoked grant of client clientID at `at` and says
	// how many it revoked.
	RevokeGrantsOfClient(ctx context.Context, clientID, by, reason string, at time.Time) (int64, error)
	// FindActiveGrants returns every grant in force for q: not revoked, NotBefore <= Now <
	// ExpiresAt, tenant and client equal, subject equal or "*", agent equal or unset.
	FindActiveGrants(ctx context.Context, q GrantQuery) ([]Grant, error)
	// ActiveGrantsOf returns the grants in force at now (not revoked, NotBefore <= now <
	// ExpiresAt) of clientID in tenant, whatever their subject and agent, ordered by id: the
	// first limit of them (limit > 0).
	ActiveGrantsOf(ctx context.Context, tenant, clientID string, now time.Time, limit int) ([]Grant, error)
}

// ---------------------------------------------------------------------------------------------
// Signing keys

// Key status values.
const (
	KeyNext    = "next"
	KeyActive  = "active"
	KeyRetired = "retired"
)

// SigningKey is one of Mandate's own signing keys. The private key is stored only encrypted.
type SigningKey struct {
	KID                 string
	Alg                 string // ES256 | EdDSA
	Status              string // next | active | retired
	PublicJWK           []byte // the public key as a JWK (JSON)
	EncryptedPrivateKey []byte // sealed by package keys; never the raw key
	CreatedAt           time.Time
	ActivatesAt         time.Time // when it starts signing (published from CreatedAt)
	RetiredAt           time.Time // zero until retired
	RemoveAt            time.Time // zero until retired: unpublished from then on
}

// KeyStore keeps signing keys.
type KeyStore interface {
	// CreateKey stores k; ErrConflict when the kid is taken.
	CreateKey(ctx context.Context, k *SigningKey) error
	// CreateKeyIfNoneLive stores k only when no stored key is live (every key, if any, is
	// retired), and reports whether it did. Of any number of callers racing on such a store,
	// from any number of processes, exactly one creates its key: replicas that start together
	// on an empty store agree on one key that signs at once.
	CreateKeyIfNoneLive(ctx context.Context, k *SigningKey) (created bool, err error)
	// ListKeys returns every stored key, oldest first.
	ListKeys(ctx context.Context) ([]SigningKey, error)
	UpdateKey(ctx context.Context, kid string, fn func(*SigningKey) error) (*SigningKey, error)
	DeleteKey(ctx context.Context, kid string) error
}

// ---------------------------------------------------------------------------------------------
// Change feed

// ChangeFeed tells the processes sharing a store about admin changes as they commit, so that
// each can drop what it caches (clients, audiences, grants) at once instead of serving it
// until a TTL runs out.
type ChangeFeed interface {
	// AnnounceChange, called on the Store handed to InTx's fn, tells every watcher what
	// changed once the transaction commits; if it rolls back, nothing is heard. what is a
	// short text (at most MaxChangeText bytes) naming the change.
	AnnounceChange(ctx context.Context, what string) error
	// WatchChanges calls changed("") once it is watching (changes before that may have been
	// missed), then changed(what) for changes announced by other processes (its own may be
	// heard too), and changed("") whenever it cannot tell what changed. It returns nil when
	// ctx is done, or the error that broke the watch; the caller watches again.
	WatchChanges(ctx context.Context, changed func(what string)) error
}

// MaxChangeText bounds AnnounceChange's text.
const MaxChangeText = 1000

// ---------------------------------------------------------------------------------------------
// Replay marks

// ReplayMark records that a one-time value checked outside an issuance (a client assertion
// jti) has been used. It is kept until ExpiresAt, after which the value it guards is rejected
// for having expired anyway. Marks and Issuance.ReplayKey are separate namespaces.
type ReplayMark struct {
	Key       string // namespaced by the caller, e.g. "assertion|client|jti"
	ExpiresAt time.Time
}

// ReplayStore keeps replay marks.
type ReplayStore interface {
	// MarkUsed sets the mark. ErrConflict when a mark with that key exists and has not
	// expired at now; an expired mark is replaced. Exactly one of any number of concurrent
	// callers with the same key succeeds.
	MarkUsed(ctx context.Context, m ReplayMark, now time.Time) error
	// DeleteExpiredReplayMarks removes the marks, and the issuances' replay keys, that
	// expired before now, and says how many.
	DeleteExpiredReplayMarks(ctx context.Context, now time.Time) (int64, error)
}

// ---------------------------------------------------------------------------------------------
// Issued tokens

// IssuedToken is what introspection and revocation need to know about a token Mandate issued;
// the claims themselves live in the signed token. It is read from the token's issuance.
type IssuedToken struct {
	JTI       string
	ClientID  string
	Audience  string
	GrantID   string    // "" when no grant was used
	IssuedAt  time.Time // the issuance's audit record time
	ExpiresAt time.Time
	RevokedAt time.Time // zero: not revoked
}

// TokenState is an issued token joined with the state of its grant and of its client, as
// they are at the time of the read.
type TokenState struct {
	IssuedToken
	GrantRevokedAt time.Time // zero when the grant is not revoked or there is none
	// GrantMissing: the token names a grant that no longer exists.
	GrantMissing bool
	// ClientMissing: no client has the token's client id any more. Otherwise the client
	// with that id now is described by the fields below (its CreatedAt after the token's
	// IssuedAt means it is another client that took a deleted one's id).
	ClientMissing    bool
	ClientCreatedAt  time.Time
	ClientDisabled   bool
	ClientDisabledAt time.Time
}

// TokenStore reads issued tokens and keeps their revocations.
type TokenStore interface {
	// GetTokenState returns the token issued as jti, its revocation and its grant's in one
	// read; ErrNotFound when no issuance wrote that jti at iat. iat is the token's iat claim,
	// the issuance time in whole seconds (IssuedAt(Audit.Time)): it tells a partitioned audit
	// log where to look, so a lookup costs the same however long the log is.
	GetTokenState(ctx context.Context, jti string, iat time.Time) (*TokenState, error)
	// RevokeToken marks the token issued as jti at iat revoked at `at` (a no-op when it
	// already is); ErrNotFound when there is no such token.
	RevokeToken(ctx context.Context, jti string, iat, at time.Time) error
	// DeleteExpiredTokens forgets the revocations of tokens that expired before now, and says
	// how many. The issuances themselves stay: they are audit records.
	DeleteExpiredTokens(ctx context.Context, now time.Time) (int64, error)
}

// ---------------------------------------------------------------------------------------------
// Markers

// MarkerBootstrap is set when the store's first admin client is created (SPEC §7).
const MarkerBootstrap = "bootstrap"

// MarkerStore keeps one-time facts about the store itself.
type MarkerStore interface {
	// SetMarker records name at `at`: ErrConflict when it is already set. Exactly one of
	// any number of concurrent callers succeeds.
	SetMarker(ctx context.Context, name string, at time.Time) error
	// GetMarker returns when name was set; ErrNotFound when it never was.
	GetMarker(ctx context.Context, name string) (time.Time, error)
}

// ---------------------------------------------------------------------------------------------
// Audit

// Audit outcomes.
const (
	OutcomeGranted = "granted"
	OutcomeDenied  = "denied"
	OutcomeError   = "error"
)

// AuditRecord is one decision or admin change.
type AuditRecord struct {
	ID              string
	Time            time.Time
	Event           string // token_exchange | client_credentials | revoke | introspect | admin.*
	Outcome         string // granted | denied | error
	Reason          string // a stable reason code
	ClientID        string
	AgentID         string
	ActorType       string // user | service, when the record is about an envelope's actor
	ActorSub        string
	Tenant          string
	DelegationMode  string
	TraceID         string
	SessionID       string
	Audience        string
	RequestedScopes []string
	GrantedScopes   []string
	EnvelopeJTI     string
	TokenJTI        string
	GrantID         string
	RemoteAddr      string
	// Detail is free-form JSON for admin events: what changed, which ids.
	Detail []byte
}

// AuditFilter narrows ListAudit; empty fields do not filter. Since is inclusive, Until
// exclusive.
type AuditFilter struct {
	Since    time.Time
	Until    time.Time
	Event    string
	Outcome  string
	ClientID string
	ActorSub string
	AgentID  string
	Tenant   string
	Audience string
	TraceID  string
	Page
}

// AuditStore keeps the audit log. Records are only appended.
type AuditStore interface {
	AppendAudit(ctx context.Context, r *AuditRecord) error
	// ListAudit returns records newest first (by Time, then ID).
	ListAudit(ctx context.Context, f AuditFilter) (items []AuditRecord, next string, err error)
	// PrepareAuditLog readies the log for the days around now: on Postgres, the day
	// partitions from the day before now's to AuditDaysAhead after it, so that writes never
	// wait for one to be made. Safe to call from any number of replicas at once.
	PrepareAuditLog(ctx context.Context, now time.Time) error
	// PruneAudit removes every record of the UTC days before AuditDay(before): on Postgres by
	// dropping their day partitions, elsewhere (and for records outside any day partition)
	// by deleting rows in short batches, so that the token endpoint's writes never wait long.
	PruneAudit(ctx context.Context, before time.Time) (AuditPruned, error)
}

// AuditDaysAhead is how many days ahead PrepareAuditLog readies the log: an outage of the
// maintenance that long still loses nothing (and later records go to a catch-all partition).
const AuditDaysAhead = 7

// AuditDay is the start of t's UTC day: the audit log's unit of retention.
func AuditDay(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }

// IssuedAt is the iat of a token issued at t: whole seconds, as JWTs carry it.
func IssuedAt(t time.Time) time.Time { return t.Truncate(time.Second) }

// AuditPruned is what PruneAudit removed.
type AuditPruned struct {
	Partitions []string // day partitions dropped whole (Postgres)
	Rows       int64    // records deleted one by one
}

// ---------------------------------------------------------------------------------------------
// Grant requests, consent records and sign-in sessions (SPEC §11)

// Grant request states as stored. GrantRequestExpired is never stored: a pending request
// past its ExpiresAt reads as expired (GrantRequest.Status).
const (
	GrantRequestPending  = "pending"
	GrantRequestApproved = "approved"
	GrantRequestDenied   = "denied"
	GrantRequestExpired  = "expired"
)

// GrantRequest is a client asking that a user (or an admin) grant it delegation: the grant it
// would become, and what became of it.
type GrantRequest struct {
	ID        string
	ClientID  string
	Tenant    string
	Subject   string
	AgentID   string // "": any agent of the client
	Audiences []string
	Scopes    []string
	Modes     []string
	Duration  time.Duration // how long the grant lasts from its approval
	Purpose   string        // the client's words, shown to the user
	State     string        // pending | approved | denied
	CreatedAt time.Time
	ExpiresAt time.Time // a pending request can no longer be decided from then on
	DecidedAt time.Time // zero while pending
	DecidedBy string    // "user:<sub>" or "admin:<client_id>"
	GrantID   string    // the grant an approval created
}

// Status is the request's state at now: a pending request past its expiry is expired.
func (r *GrantRequest) Status(now time.Time) string {
	if r.State == GrantRequestPending && !now.Before(r.ExpiresAt) {
		return GrantRequestExpired
	}
	return r.State
}

// GrantRequestFilter narrows ListGrantRequests; empty fields do not filter. Status is
// evaluated at Now.
type GrantRequestFilter struct {
	ClientID string
	Tenant   string
	Subject  string
	Status   string
	Now      time.Time
	Page
}

// GrantRequestDecision is how a pending request is closed.
type GrantRequestDecision struct {
	State     string // GrantRequestApproved or GrantRequestDenied
	DecidedBy string
	DecidedAt time.Time
	GrantID   string // with an approval
}

// GrantRequestStore keeps grant requests. A request is decided once.
type GrantRequestStore interface {
	// CreateGrantRequest stores r; ErrConflict when the id is taken.
	CreateGrantRequest(ctx context.Context, r *GrantRequest) error
	GetGrantRequest(ctx context.Context, id string) (*GrantRequest, error)
	// ListGrantRequests returns requests newest first (by id, which sorts by creation).
	ListGrantRequests(ctx context.Context, f GrantRequestFilter) (items []GrantRequest, next string, err error)
	// DecideGrantRequest closes a request that is pending and unexpired at d.DecidedAt, and
	// returns it as decided. ErrNotFound when there is no such request; ErrConflict when it
	// was already decided or has expired. Of any number of concurrent deciders exactly one
	// succeeds.
	DecideGrantRequest(ctx context.Context, id string, d GrantRequestDecision) (*GrantRequest, error)
}

// ConsentRecord is the durable proof that someone approved a grant: who, when, from where,
// through which request, and the exact text they were shown. It lives as long as its grant.
type ConsentRecord struct {
	GrantID    string
	RequestID  string
	ApprovedBy string // "user:<sub>" or "admin:<client_id>"
	ApprovedAt time.Time
	RemoteAddr string
	Text       string
}

// ConsentStore keeps consent records, one per grant at most.
type ConsentStore interface {
	// CreateConsent stores c; ErrConflict when its grant already has one. The grant must
	// exist.
	CreateConsent(ctx context.Context, c *ConsentRecord) error
	// GetConsents returns the consent records of the grants named (in no particular order);
	// grants without one are left out.
	GetConsents(ctx context.Context, grantIDs []string) ([]ConsentRecord, error)
}

// Session is a browser's server-side session on the consent and account pages. Before
// sign-in it holds the OpenID Connect login's state, nonce and PKCE verifier; after, the
// signed-in user. The cookie carries a random value; ID is its hash, so a copy of the store
// does not yield live cookies.
type Session struct {
	ID            string
	Subject       string // "" until signed in
	Tenant        string
	Name          string // for display
	CSRFToken     string
	LoginState    string
	LoginNonce    string
	LoginVerifier string
	ReturnTo      string // a local path to go back to after sign-in
	CreatedAt     time.Time
	LastSeenAt    time.Time
	ExpiresAt     time.Time // absolute end
}

// SessionStore keeps sessions.
type SessionStore interface {
	// CreateSession stores s; ErrConflict when the id is taken.
	CreateSession(ctx context.Context, s *Session) error
	GetSession(ctx context.Context, id string) (*Session, error)
	// TouchSession sets LastSeenAt; ErrNotFound when there is no such session.
	TouchSession(ctx context.Context, id string, at time.Time) error
	// DeleteSession removes the session; ErrNotFound when there is none.
	DeleteSession(ctx context.Context, id string) error
	// DeleteExpiredSessions removes sessions whose ExpiresAt is before now, or that were
	// last seen before idleSince, and says how many.
	DeleteExpiredSessions(ctx context.Context, now, idleSince time.Time) (int64, error)
}
