package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// DefaultDatabaseTimeout bounds each store call when Options.DatabaseTimeout is zero.
const DefaultDatabaseTimeout = 2 * time.Second

// deadlineStore gives every store call a deadline, so that a database that stops answering
// (a held lock, a frozen server, a failover) costs a caller at most the timeout and then a
// 503 (storage.ErrUnavailable), never a request that hangs as long as the database does.
// The deadline covers everything the backend waits for: a pooled connection (pgx's acquire,
// database/sql's queue for SQLite's one write connection), locks, the answer. SQLite's
// busy wait ignores contexts, so cmd/mandate sets its busy_timeout to the same timeout.
//
// A transaction gets one deadline as a whole: each call inside it is bounded by the
// transaction's deadline as well as its own timeout, so a change of several statements
// cannot take several timeouts.
//
// Every method of storage.Store is written out here, none promoted from an embedded Store,
// so a method added to the contract does not compile until it is bounded too. A backend that
// batches calls (group commit) must keep honouring each caller's ctx: the caller's wait ends
// at its deadline whether or not its batch has committed (see storage.Store.RecordIssuance).
type deadlineStore struct {
	s       storage.Store
	timeout time.Duration
	txEnd   time.Time // on the Store handed to InTx's fn: when the transaction's time is up
}

var _ storage.Store = deadlineStore{}

// errDeadline is the cause of a context this wrapper cut short, telling its deadline apart
// from the caller's own.
var errDeadline = errors.New("store call deadline")

func (d deadlineStore) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	end := time.Now().Add(d.timeout)
	if !d.txEnd.IsZero() && d.txEnd.Before(end) {
		end = d.txEnd
	}
	return context.WithDeadlineCause(ctx, end, errDeadline)
}

// check marks err as storage.ErrUnavailable when this wrapper's deadline is what ended the call.
func (d deadlineStore) check(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, storage.ErrUnavailable) || !errors.Is(context.Cause(ctx), errDeadline) {
		return err
	}
	return fmt.Errorf("%w: no answer within %s: %w", storage.ErrUnavailable, d.timeout, err)
}

func call0(d deadlineStore, ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	return d.check(ctx, f(ctx))
}

func call1[T any](d deadlineStore, ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	v, err := f(ctx)
	return v, d.check(ctx, err)
}

func call2[T, U any](d deadlineStore, ctx context.Context, f func(context.Context) (T, U, error)) (T, U, error) {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	v, w, err := f(ctx)
	return v, w, d.check(ctx, err)
}

// InTx bounds the whole transaction, and hands fn a Store that bounds each call in it.
func (d deadlineStore) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	if !d.txEnd.IsZero() { // already in a transaction: InTx does not nest
		return d.s.InTx(ctx, func(tx storage.Store) error {
			return fn(deadlineStore{s: tx, timeout: d.timeout, txEnd: d.txEnd})
		})
	}
	end := time.Now().Add(d.timeout)
	ctx, cancel := context.WithDeadlineCause(ctx, end, errDeadline)
	defer cancel()
	err := d.s.InTx(ctx, func(tx storage.Store) error {
		return fn(deadlineStore{s: tx, timeout: d.timeout, txEnd: end})
	})
	return d.check(ctx, err)
}

// RecordIssuance is the token endpoint's write: a deadline here is what turns a stuck commit
// into a 503 rather than a hung exchange.
func (d deadlineStore) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.RecordIssuance(ctx, iss) })
}

// RecordIssuances is a group commit's write: one deadline for the batch.
func (d deadlineStore) RecordIssuances(ctx context.Context, iss []storage.Issuance) []error {
	ctx, cancel := d.bound(ctx)
	defer cancel()
	errs := d.s.RecordIssuances(ctx, iss)
	for i := range errs {
		errs[i] = d.check(ctx, errs[i])
	}
	return errs
}

// ReplayKeyUsed is explain's read of what RecordIssuance would refuse.
func (d deadlineStore) ReplayKeyUsed(ctx context.Context, key string) (bool, error) {
	return call1(d, ctx, func(ctx context.Context) (bool, error) { return d.s.ReplayKeyUsed(ctx, key) })
}

func (d deadlineStore) Ping(ctx context.Context) error { return call0(d, ctx, d.s.Ping) }
func (d deadlineStore) Close() error                   { return d.s.Close() }

// Clients

func (d deadlineStore) CreateClient(ctx context.Context, c *storage.Client) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateClient(ctx, c) })
}

func (d deadlineStore) GetClient(ctx context.Context, id string) (*storage.Client, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Client, error) { return d.s.GetClient(ctx, id) })
}

func (d deadlineStore) ListClients(ctx context.Context, p storage.Page) ([]storage.Client, string, error) {
	return call2(d, ctx, func(ctx context.Context) ([]storage.Client, string, error) { return d.s.ListClients(ctx, p) })
}

func (d deadlineStore) UpdateClient(ctx context.Context, id string, fn func(*storage.Client) error) (*storage.Client, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Client, error) { return d.s.UpdateClient(ctx, id, fn) })
}

func (d deadlineStore) DeleteClient(ctx context.Context, id string) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.DeleteClient(ctx, id) })
}

func (d deadlineStore) LockEnabledClientsWith(ctx context.Context, scope, grantType string) ([]string, error) {
	return call1(d, ctx, func(ctx context.Context) ([]string, error) { return d.s.LockEnabledClientsWith(ctx, scope, grantType) })
}

// Audiences

func (d deadlineStore) CreateAudience(ctx context.Context, a *storage.Audience) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateAudience(ctx, a) })
}

func (d deadlineStore) GetAudience(ctx context.Context, id string) (*storage.Audience, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Audience, error) { return d.s.GetAudience(ctx, id) })
}

func (d deadlineStore) GetAudienceByResource(ctx context.Context, uri string) (*storage.Audience, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Audience, error) { return d.s.GetAudienceByResource(ctx, uri) })
}

func (d deadlineStore) ListAudiences(ctx context.Context, p storage.Page) ([]storage.Audience, string, error) {
	return call2(d, ctx, func(ctx context.Context) ([]storage.Audience, string, error) { return d.s.ListAudiences(ctx, p) })
}

func (d deadlineStore) UpdateAudience(ctx context.Context, id string, fn func(*storage.Audience) error) (*storage.Audience, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Audience, error) { return d.s.UpdateAudience(ctx, id, fn) })
}

func (d deadlineStore) DeleteAudience(ctx context.Context, id string) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.DeleteAudience(ctx, id) })
}

// Grants

func (d deadlineStore) CreateGrant(ctx context.Context, g *storage.Grant) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateGrant(ctx, g) })
}

func (d deadlineStore) GetGrant(ctx context.Context, id string) (*storage.Grant, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Grant, error) { return d.s.GetGrant(ctx, id) })
}

func (d deadlineStore) ListGrants(ctx context.Context, f storage.GrantFilter) ([]storage.Grant, string, error) {
	return call2(d, ctx, func(ctx context.Context) ([]storage.Grant, string, error) { return d.s.ListGrants(ctx, f) })
}

func (d deadlineStore) RevokeGrant(ctx context.Context, id, by, reason string, at time.Time) (*storage.Grant, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Grant, error) { return d.s.RevokeGrant(ctx, id, by, reason, at) })
}

func (d deadlineStore) FindActiveGrants(ctx context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	return call1(d, ctx, func(ctx context.Context) ([]storage.Grant, error) { return d.s.FindActiveGrants(ctx, q) })
}

func (d deadlineStore) ActiveGrantsOf(ctx context.Context, tenant, clientID string, now time.Time, limit int) ([]storage.Grant, error) {
	return call1(d, ctx, func(ctx context.Context) ([]storage.Grant, error) {
		return d.s.ActiveGrantsOf(ctx, tenant, clientID, now, limit)
	})
}

func (d deadlineStore) RevokeGrantsOfClient(ctx context.Context, clientID, by, reason string, at time.Time) (int64, error) {
	return call1(d, ctx, func(ctx context.Context) (int64, error) {
		return d.s.RevokeGrantsOfClient(ctx, clientID, by, reason, at)
	})
}

// Keys

func (d deadlineStore) CreateKey(ctx context.Context, k *storage.SigningKey) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateKey(ctx, k) })
}

func (d deadlineStore) CreateKeyIfNoneLive(ctx context.Context, k *storage.SigningKey) (bool, error) {
	return call1(d, ctx, func(ctx context.Context) (bool, error) { return d.s.CreateKeyIfNoneLive(ctx, k) })
}

func (d deadlineStore) ListKeys(ctx context.Context) ([]storage.SigningKey, error) {
	return call1(d, ctx, d.s.ListKeys)
}

func (d deadlineStore) UpdateKey(ctx context.Context, kid string, fn func(*storage.SigningKey) error) (*storage.SigningKey, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.SigningKey, error) { return d.s.UpdateKey(ctx, kid, fn) })
}

func (d deadlineStore) DeleteKey(ctx context.Context, kid string) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.DeleteKey(ctx, kid) })
}

// Replay marks

func (d deadlineStore) MarkUsed(ctx context.Context, m storage.ReplayMark, now time.Time) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.MarkUsed(ctx, m, now) })
}

func (d deadlineStore) DeleteExpiredReplayMarks(ctx context.Context, now time.Time) (int64, error) {
	return call1(d, ctx, func(ctx context.Context) (int64, error) { return d.s.DeleteExpiredReplayMarks(ctx, now) })
}

// Tokens

func (d deadlineStore) GetTokenState(ctx context.Context, jti string, iat time.Time) (*storage.TokenState, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.TokenState, error) { return d.s.GetTokenState(ctx, jti, iat) })
}

func (d deadlineStore) RevokeToken(ctx context.Context, jti string, iat, at time.Time) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.RevokeToken(ctx, jti, iat, at) })
}

func (d deadlineStore) DeleteExpiredTokens(ctx context.Context, now time.Time) (int64, error) {
	return call1(d, ctx, func(ctx context.Context) (int64, error) { return d.s.DeleteExpiredTokens(ctx, now) })
}

// Audit

func (d deadlineStore) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.AppendAudit(ctx, r) })
}

// PrepareAuditLog and PruneAudit are maintenance, not requests: they run as long as they
// need (PruneAudit may delete a backlog batch after batch), bounded by the caller's ctx only.
func (d deadlineStore) PrepareAuditLog(ctx context.Context, now time.Time) error {
	return d.s.PrepareAuditLog(ctx, now)
}

func (d deadlineStore) PruneAudit(ctx context.Context, before time.Time) (storage.AuditPruned, error) {
	return d.s.PruneAudit(ctx, before)
}

func (d deadlineStore) ListAudit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditRecord, string, error) {
	return call2(d, ctx, func(ctx context.Context) ([]storage.AuditRecord, string, error) { return d.s.ListAudit(ctx, f) })
}

// Grant requests, consents, sign-in sessions

func (d deadlineStore) CreateGrantRequest(ctx context.Context, r *storage.GrantRequest) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateGrantRequest(ctx, r) })
}

func (d deadlineStore) GetGrantRequest(ctx context.Context, id string) (*storage.GrantRequest, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.GrantRequest, error) { return d.s.GetGrantRequest(ctx, id) })
}

func (d deadlineStore) ListGrantRequests(ctx context.Context, f storage.GrantRequestFilter) ([]storage.GrantRequest, string, error) {
	return call2(d, ctx, func(ctx context.Context) ([]storage.GrantRequest, string, error) {
		return d.s.ListGrantRequests(ctx, f)
	})
}

func (d deadlineStore) DecideGrantRequest(ctx context.Context, id string, dec storage.GrantRequestDecision) (*storage.GrantRequest, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.GrantRequest, error) { return d.s.DecideGrantRequest(ctx, id, dec) })
}

func (d deadlineStore) CreateConsent(ctx context.Context, c *storage.ConsentRecord) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateConsent(ctx, c) })
}

func (d deadlineStore) GetConsents(ctx context.Context, grantIDs []string) ([]storage.ConsentRecord, error) {
	return call1(d, ctx, func(ctx context.Context) ([]storage.ConsentRecord, error) { return d.s.GetConsents(ctx, grantIDs) })
}

func (d deadlineStore) CreateSession(ctx context.Context, s *storage.Session) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.CreateSession(ctx, s) })
}

func (d deadlineStore) GetSession(ctx context.Context, id string) (*storage.Session, error) {
	return call1(d, ctx, func(ctx context.Context) (*storage.Session, error) { return d.s.GetSession(ctx, id) })
}

func (d deadlineStore) TouchSession(ctx context.Context, id string, at time.Time) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.TouchSession(ctx, id, at) })
}

func (d deadlineStore) DeleteSession(ctx context.Context, id string) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.DeleteSession(ctx, id) })
}

func (d deadlineStore) DeleteExpiredSessions(ctx context.Context, now, idleSince time.Time) (int64, error) {
	return call1(d, ctx, func(ctx context.Context) (int64, error) { return d.s.DeleteExpiredSessions(ctx, now, idleSince) })
}

// Markers

func (d deadlineStore) SetMarker(ctx context.Context, name string, at time.Time) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.SetMarker(ctx, name, at) })
}

func (d deadlineStore) GetMarker(ctx context.Context, name string) (time.Time, error) {
	return call1(d, ctx, func(ctx context.Context) (time.Time, error) { return d.s.GetMarker(ctx, name) })
}

// Change feed

func (d deadlineStore) AnnounceChange(ctx context.Context, what string) error {
	return call0(d, ctx, func(ctx context.Context) error { return d.s.AnnounceChange(ctx, what) })
}

// WatchChanges runs as long as the server does: no deadline, by design.
func (d deadlineStore) WatchChanges(ctx context.Context, changed func(what string)) error {
	return d.s.WatchChanges(ctx, changed)
}
