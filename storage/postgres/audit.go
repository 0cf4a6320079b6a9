package postgres

import (
	"context"
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

// ListAudit implements storage.AuditStore: newest first by (time, id), paged by a keyset
// cursor on the same pair so the (time DESC, id DESC) indexes serve every page.
func (s *Store) ListAudit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditRecord, string, error) {
	var w where
	if f.Cursor != "" {
		key, err := storage.DecodeCursor("audit", f.Cursor, 2)
		if err != nil {
			return nil, "", err
		}
		us, err := strconv.ParseInt(key[0], 10, 64)
		if err != nil {
			return nil, "", storage.ErrBadCursor
		}
		w.add("(time, id) < (%s, %s)", time.UnixMicro(us).UTC(), key[1])
	}
	if !f.Since.IsZero() {
		w.add("time >= %s", ts(f.Since))
	}
	if !f.Until.IsZero() {
		w.add("time < %s", ts(f.Until))
	}
	w.eq("event", f.Event)
	w.eq("outcome", f.Outcome)
	w.eq("client_id", f.ClientID)
	w.eq("actor_sub", f.ActorSub)
	w.eq("agent_id", f.AgentID)
	w.eq("tenant", f.Tenant)
	w.eq("audience", f.Audience)
	w.eq("trace_id", f.TraceID)
	limit := f.EffectiveLimit()
	sql := `SELECT ` + auditCols + ` FROM audit_log` + w.sql() +
		` ORDER BY time DESC, id DESC LIMIT ` + w.next(limit+1)
	rows, err := s.db.Query(ctx, sql, w.args...)
	items, err := collect(rows, err, scanAudit)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(a *storage.AuditRecord) string {
		return storage.EncodeCursor("audit", strconv.FormatInt(a.Time.UnixMicro(), 10), a.ID)
	})
	return items, next, nil
}
