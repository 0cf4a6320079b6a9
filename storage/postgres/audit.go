package postgres

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/mandatehq/mandate/storage"
)

const auditCols = `id, time, event, outcome, reason, client_id, agent_id, actor_sub, tenant,
	delegation_mode, trace_id, session_id, audience, requested_scopes, granted_scopes,
	envelope_jti, token_jti, grant_id, remote_addr, detail, actor_type`

func scanAudit(r rowScanner) (*storage.AuditRecord, error) {
	var a storage.AuditRecord
	err := r.Scan(&a.ID, timeCol{&a.Time}, &a.Event, &a.Outcome, &a.Reason, &a.ClientID,
		&a.AgentID, &a.ActorSub, &a.Tenant, &a.DelegationMode, &a.TraceID, &a.SessionID,
		&a.Audience, &a.RequestedScopes, &a.GrantedScopes, &a.EnvelopeJTI, &a.TokenJTI,
		&a.GrantID, &a.RemoteAddr, &a.Detail, &a.ActorType)
	if err != nil {
		return nil, mapErr(err)
	}
	nilEmpty(&a.RequestedScopes, &a.GrantedScopes)
	a.Detail = nullBytes(a.Detail)
	return &a, nil
}

// auditArgs are r's columns in auditCols order.
func auditArgs(r *storage.AuditRecord) []any { return appendAuditArgs(make([]any, 0, 21), r) }

// appendAuditArgs appends r's columns, in auditCols order, to args.
func appendAuditArgs(args []any, r *storage.AuditRecord) []any {
	return append(args, r.ID, ts(r.Time), r.Event, r.Outcome, r.Reason, r.ClientID, r.AgentID,
		r.ActorSub, r.Tenant, r.DelegationMode, r.TraceID, r.SessionID, r.Audience,
		list(r.RequestedScopes), list(r.GrantedScopes), r.EnvelopeJTI, r.TokenJTI, r.GrantID,
		r.RemoteAddr, nullBytes(r.Detail), r.ActorType)
}

// AppendAudit implements storage.AuditStore.
func (s *Store) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO audit_log (`+auditCols+`) VALUES
			($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)`,
			auditArgs(r)...)
		return mapErr(err)
	})
}

// auditWindows are how far back, from the page's anchor, ListAudit's successive reads reach:
// the log is partitioned by day, and a read without a lower time bound would open every
// partition's index (hundreds, at 400 days) when the first page is nearly always in the
// newest day. Each read takes the time range below the previous one's, so the records come
// in order; the last reaches back without bound.
var auditWindows = []time.Duration{24 * time.Hour, 8 * 24 * time.Hour, 64 * 24 * time.Hour}

// ListAudit implements storage.AuditStore: newest first by (time, id), paged by a keyset
// cursor on the same pair so the (time, id) indexes serve every page. The page is read in
// widening time windows (auditWindows) until it is full.
func (s *Store) ListAudit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditRecord, string, error) {
	var base where
	anchor := time.Now()
	if f.Cursor != "" {
		key, err := storage.DecodeCursor("audit", f.Cursor, 2)
		if err != nil {
			return nil, "", err
		}
		us, err := strconv.ParseInt(key[0], 10, 64)
		if err != nil {
			return nil, "", storage.ErrBadCursor
		}
		at := time.UnixMicro(us).UTC()
		base.add("(time, id) < (%s, %s)", at, key[1])
		anchor = at
	}
	if !f.Since.IsZero() {
		base.add("time >= %s", ts(f.Since))
	}
	if !f.Until.IsZero() {
		base.add("time < %s", ts(f.Until))
		anchor = minTime(anchor, f.Until)
	}
	base.eq("event", f.Event)
	base.eq("outcome", f.Outcome)
	base.eq("client_id", f.ClientID)
	base.eq("actor_sub", f.ActorSub)
	base.eq("agent_id", f.AgentID)
	base.eq("tenant", f.Tenant)
	base.eq("audience", f.Audience)
	base.eq("trace_id", f.TraceID)
	limit := f.EffectiveLimit()

	var items []storage.AuditRecord
	var upper time.Time // the previous window's lower bound; zero for the first window
	for i := 0; i <= len(auditWindows) && len(items) <= limit; i++ {
		w := where{conds: slices.Clone(base.conds), args: slices.Clone(base.args)}
		if !upper.IsZero() {
			w.add("time < %s", ts(upper))
		}
		var lower time.Time
		if i < len(auditWindows) {
			lower = anchor.Add(-auditWindows[i])
			if !f.Since.IsZero() && !lower.After(f.Since) {
				lower = time.Time{} // since bounds this read already, and it is the last
			} else {
				w.add("time >= %s", ts(lower))
			}
		}
		sql := `SELECT ` + auditCols + ` FROM audit_log` + w.sql() +
			` ORDER BY time DESC, id DESC LIMIT ` + w.next(limit+1-len(items))
		rows, err := s.db.Query(ctx, sql, w.args...)
		got, err := collect(rows, err, scanAudit)
		if err != nil {
			return nil, "", err
		}
		items = append(items, got...)
		if lower.IsZero() {
			break
		}
		upper = lower
	}
	items, next := storage.TrimPage(items, limit, func(a *storage.AuditRecord) string {
		return storage.EncodeCursor("audit", strconv.FormatInt(a.Time.UnixMicro(), 10), a.ID)
	})
	return items, next, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
