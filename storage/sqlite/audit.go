package sqlite

import (
	"context"
	"strconv"
	"strings"
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
		&a.Audience, listCol{&a.RequestedScopes}, listCol{&a.GrantedScopes}, &a.EnvelopeJTI,
		&a.TokenJTI, &a.GrantID, &a.RemoteAddr, bytesCol{&a.Detail}, &a.ActorType)
	if err != nil {
		return nil, mapErr(err)
	}
	return &a, nil
}

// AppendAudit implements storage.AuditStore.
func (s *Store) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	_, err := s.writer().ExecContext(ctx, insertAudit, auditArgs(r)...)
	return mapErr(err)
}

const insertAudit = `INSERT INTO audit_log (` + auditCols + `)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func auditArgs(r *storage.AuditRecord) []any {
	return []any{r.ID, micros(r.Time), r.Event, r.Outcome, r.Reason, r.ClientID, r.AgentID,
		r.ActorSub, r.Tenant, r.DelegationMode, r.TraceID, r.SessionID, r.Audience,
		list(r.RequestedScopes), list(r.GrantedScopes), r.EnvelopeJTI, r.TokenJTI, r.GrantID,
		r.RemoteAddr, nullText(r.Detail), r.ActorType}
}

// ListAudit implements storage.AuditStore: newest first by (time, id).
func (s *Store) ListAudit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditRecord, string, error) {
	var where []string
	var args []any
	if f.Cursor != "" {
		key, err := storage.DecodeCursor("audit", f.Cursor, 2)
		if err != nil {
			return nil, "", err
		}
		t, err := strconv.ParseInt(key[0], 10, 64)
		if err != nil {
			return nil, "", storage.ErrBadCursor
		}
		where = append(where, "(time, id) < (?, ?)")
		args = append(args, t, key[1])
	}
	if !f.Since.IsZero() {
		where = append(where, "time >= ?")
		args = append(args, micros(f.Since))
	}
	if !f.Until.IsZero() {
		where = append(where, "time < ?")
		args = append(args, micros(f.Until))
	}
	for _, c := range []struct{ col, v string }{
		{"event", f.Event}, {"outcome", f.Outcome}, {"client_id", f.ClientID},
		{"actor_sub", f.ActorSub}, {"agent_id", f.AgentID}, {"tenant", f.Tenant},
		{"audience", f.Audience}, {"trace_id", f.TraceID},
	} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	query := `SELECT ` + auditCols + ` FROM audit_log`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := f.EffectiveLimit()
	args = append(args, limit+1)
	rows, err := s.reader().QueryContext(ctx, query+` ORDER BY time DESC, id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, "", mapErr(err)
	}
	items, err := collect(rows, scanAudit)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(a *storage.AuditRecord) string {
		return storage.EncodeCursor("audit", strconv.FormatInt(micros(a.Time), 10), a.ID)
	})
	return items, next, nil
}

// pruneBatchRows bounds one delete of PruneAudit: long enough to make progress, short enough
// (a few milliseconds) that the token endpoint's writes, which queue for the same single
// writer connection, never wait long.
const pruneBatchRows = 1000

// PrepareAuditLog implements storage.AuditStore: one table, nothing to prepare.
func (s *Store) PrepareAuditLog(context.Context, time.Time) error { return nil }

// PruneAudit implements storage.AuditStore by deleting the old records a batch at a time,
// oldest first, each batch its own transaction; the writer connection goes back to the pool
// between batches, so waiting writes take their turn.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (storage.AuditPruned, error) {
	var out storage.AuditPruned
	cutoff := micros(storage.AuditDay(before))
	for {
		res, err := s.writer().ExecContext(ctx, `DELETE FROM audit_log WHERE rowid IN (
			SELECT rowid FROM audit_log WHERE time < ? ORDER BY time LIMIT ?)`, cutoff, pruneBatchRows)
		if err != nil {
			return out, mapErr(err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return out, mapErr(err)
		}
		out.Rows += n
		if n < pruneBatchRows {
			return out, nil
		}
	}
}
