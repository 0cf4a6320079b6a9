package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// markUsed is one statement, so it is atomic on its own: the upsert replaces a mark only when
// it has expired at now (expires_at <= now, the rule of storage.Grant.Status), and changes no
// row when a live one holds the key. Concurrent callers queue on the key's index entry and
// row lock, and each re-reads the latest row before deciding, so exactly one wins.
const markUsed = `INSERT INTO replay_marks AS m (key, expires_at) VALUES ($1, $2)
	ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
	WHERE m.expires_at <= $3`

// MarkUsed implements storage.ReplayStore.
func (s *Store) MarkUsed(ctx context.Context, m storage.ReplayMark, now time.Time) error {
	return s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, markUsed, m.Key, ts(m.ExpiresAt), ts(now))
		if err != nil {
			return mapErr(err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: replay mark already set", storage.ErrConflict)
		}
		return nil
	})
}

// DeleteExpiredReplayMarks implements storage.ReplayStore: client assertion marks and
// issuances' replay keys, in one statement.
func (s *Store) DeleteExpiredReplayMarks(ctx context.Context, now time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(q querier) error {
		return mapErr(q.QueryRow(ctx, `WITH m AS (DELETE FROM replay_marks WHERE expires_at < $1 RETURNING 1),
			k AS (DELETE FROM issuance_keys WHERE expires_at < $1 RETURNING 1)
			SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM k)`, ts(now)).Scan(&n))
	})
	return n, err
}

// recordIssuance is RecordIssuance's single statement: one round trip, atomic because it is
// one statement.
//
//   - g locks the grant row FOR SHARE when there is one and it is unrevoked: a concurrent
//     RevokeGrant either commits first (then g finds revoked_at set and comes back empty, so
//     nothing is inserted) or waits for this statement to commit, so the grant is unrevoked
//     at commit time.
//   - k takes the replay key in issuance_keys, where it is the primary key: a used key
//     conflicts and k comes back empty, so the record is not inserted either. Concurrent
//     inserts of one key queue on its index entry, so exactly one of them commits.
//   - The record goes to the audit log's partition of its day.
const recordIssuance = `WITH g AS (
	SELECT 1 FROM grants
	WHERE $18::text <> '' AND id = $18::text AND revoked_at IS NULL
	FOR SHARE
), k AS (
	INSERT INTO issuance_keys (key, expires_at)
	SELECT $23, $24 WHERE $23::text <> '' AND ($18::text = '' OR EXISTS (SELECT 1 FROM g))
	ON CONFLICT DO NOTHING
	RETURNING 1
)
INSERT INTO audit_log (` + auditCols + `, token_expires_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
	$20, $21, $22
WHERE ($18::text = '' OR EXISTS (SELECT 1 FROM g)) AND ($23::text = '' OR EXISTS (SELECT 1 FROM k))`

// RecordIssuance implements storage.Store in one statement, hence one round trip on a warm
// connection (pgx caches the prepared statement per connection).
func (s *Store) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	if err := storage.CheckIssuance(&iss); err != nil {
		return err
	}
	args := make([]any, 0, 24)
	args = appendAuditArgs(args, &iss.Audit)
	args = append(args, ts(iss.TokenExpiresAt), iss.ReplayKey, ts(iss.ReplayExpiresAt))
	return s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, recordIssuance, args...)
		if err != nil {
			return mapErr(err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: replay key already used, or grant %q revoked or gone",
				storage.ErrConflict, iss.Audit.GrantID)
		}
		return nil
	})
}

// recordIssuances is RecordIssuances' single statement: the rows travel as one array per
// column (binary, no per-row parameters), so a batch of any size is one round trip and one
// commit. Per row it applies recordIssuance's rules:
//
//   - g locks, FOR SHARE and in id order, the batch's grants that exist unrevoked; ok are the
//     rows whose grant is among them (or that have none). The lock order keeps concurrent
//     batches (other replicas) from deadlocking on each other; a revocation waits for the
//     batch or makes it skip that grant's rows, as for one row.
//   - d is the first of ok's rows for each replay key (the batch's order decides between its
//     own rows); k inserts their keys in key order, again so that two batches wait on each
//     other's index entries in one order, and ON CONFLICT DO NOTHING skips a key used by a
//     committed row or by a concurrent batch once it commits, instead of failing the
//     statement: one replay does not fail its neighbours.
//   - The records inserted are ok's rows without a key and d's rows whose key k took;
//     RETURNING names them, and every other row conflicted. (A clash of record ids, which are
//     random, would skip that record too.)
//
// The scope lists go as JSON text, because a Postgres array of arrays would be flattened by
// unnest.
const recordIssuances = `WITH v AS (
	SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
		$6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
		$13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[],
		$20::text[], $21::text[], $22::timestamptz[], $23::text[], $24::timestamptz[])
		WITH ORDINALITY
	AS v(id, time, event, outcome, reason, client_id, agent_id, actor_sub, tenant,
		delegation_mode, trace_id, session_id, audience, requested_scopes, granted_scopes,
		envelope_jti, token_jti, grant_id, remote_addr, detail, actor_type, token_expires_at,
		replay_key, replay_expires_at, n)
), g AS (
	SELECT id FROM grants
	WHERE id IN (SELECT grant_id FROM v WHERE grant_id <> '') AND revoked_at IS NULL
	ORDER BY id
	FOR SHARE
), ok AS (
	SELECT * FROM v WHERE grant_id = '' OR grant_id IN (SELECT id FROM g)
), d AS (
	SELECT DISTINCT ON (replay_key) replay_key, replay_expires_at, n FROM ok
	WHERE replay_key <> ''
	ORDER BY replay_key, n
), k AS (
	INSERT INTO issuance_keys (key, expires_at)
	SELECT replay_key, replay_expires_at FROM d ORDER BY replay_key
	ON CONFLICT DO NOTHING
	RETURNING key
)
INSERT INTO audit_log (` + auditCols + `, token_expires_at)
SELECT id, time, event, outcome, reason, client_id, agent_id, actor_sub, tenant,
	delegation_mode, trace_id, session_id, audience,
	ARRAY(SELECT jsonb_array_elements_text(requested_scopes::jsonb)),
	ARRAY(SELECT jsonb_array_elements_text(granted_scopes::jsonb)),
	envelope_jti, token_jti, grant_id, remote_addr, detail::jsonb, actor_type, token_expires_at
FROM ok
WHERE replay_key = '' OR n IN (SELECT d.n FROM d JOIN k ON k.key = d.replay_key)
ON CONFLICT DO NOTHING
RETURNING id`

// RecordIssuances implements storage.Store: one statement for the whole batch (a batch of
// one is RecordIssuance's own statement, so low load pays nothing for batching).
func (s *Store) RecordIssuances(ctx context.Context, iss []storage.Issuance) []error {
	errs := make([]error, len(iss))
	valid := make([]int, 0, len(iss)) // indexes into iss of the rows that go to the database
	for i := range iss {
		if errs[i] = storage.CheckIssuance(&iss[i]); errs[i] == nil {
			valid = append(valid, i)
		}
	}
	switch len(valid) {
	case 0:
		return errs
	case 1:
		errs[valid[0]] = s.RecordIssuance(ctx, iss[valid[0]])
		return errs
	}
	cols := newIssuanceColumns(len(valid))
	for _, i := range valid {
		cols.add(&iss[i])
	}
	written := make(map[string]bool, len(valid))
	err := s.write(ctx, func(q querier) error {
		rows, err := q.Query(ctx, recordIssuances, cols.args()...)
		if err != nil {
			return mapErr(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return mapErr(err)
			}
			written[id] = true
		}
		return mapErr(rows.Err())
	})
	for _, i := range valid {
		switch {
		case err != nil:
			errs[i] = err
		case !written[iss[i].Audit.ID]:
			errs[i] = fmt.Errorf("%w: replay key already used, or grant %q revoked or gone",
				storage.ErrConflict, iss[i].Audit.GrantID)
		}
	}
	return errs
}

// issuanceColumns holds a batch column by column, in recordIssuances' parameter order.
type issuanceColumns struct {
	id, event, outcome, reason, clientID, agentID, actorSub, tenant, mode, traceID, sessionID,
	audience, requested, granted, envelopeJTI, tokenJTI, grantID, remoteAddr, actorType,
	replayKey []string
	detail                        []*string
	time, tokenExpAt, replayExpAt []time.Time
}

func newIssuanceColumns(n int) *issuanceColumns {
	c := &issuanceColumns{detail: make([]*string, 0, n), time: make([]time.Time, 0, n),
		tokenExpAt: make([]time.Time, 0, n), replayExpAt: make([]time.Time, 0, n)}
	for _, col := range c.strings() {
		*col = make([]string, 0, n)
	}
	return c
}

func (c *issuanceColumns) strings() []*[]string {
	return []*[]string{&c.id, &c.event, &c.outcome, &c.reason, &c.clientID, &c.agentID,
		&c.actorSub, &c.tenant, &c.mode, &c.traceID, &c.sessionID, &c.audience, &c.requested,
		&c.granted, &c.envelopeJTI, &c.tokenJTI, &c.grantID, &c.remoteAddr, &c.actorType,
		&c.replayKey}
}

// add appends one issuance.
func (c *issuanceColumns) add(iss *storage.Issuance) {
	r := &iss.Audit
	requested, _ := json.Marshal(list(r.RequestedScopes)) // a []string always encodes
	granted, _ := json.Marshal(list(r.GrantedScopes))
	var detail *string
	if len(r.Detail) > 0 {
		d := string(r.Detail)
		detail = &d
	}
	c.id = append(c.id, r.ID)
	c.time = append(c.time, ts(r.Time))
	c.event = append(c.event, r.Event)
	c.outcome = append(c.outcome, r.Outcome)
	c.reason = append(c.reason, r.Reason)
	c.clientID = append(c.clientID, r.ClientID)
	c.agentID = append(c.agentID, r.AgentID)
	c.actorSub = append(c.actorSub, r.ActorSub)
	c.tenant = append(c.tenant, r.Tenant)
	c.mode = append(c.mode, r.DelegationMode)
	c.traceID = append(c.traceID, r.TraceID)
	c.sessionID = append(c.sessionID, r.SessionID)
	c.audience = append(c.audience, r.Audience)
	c.requested = append(c.requested, string(requested))
	c.granted = append(c.granted, string(granted))
	c.envelopeJTI = append(c.envelopeJTI, r.EnvelopeJTI)
	c.tokenJTI = append(c.tokenJTI, r.TokenJTI)
	c.grantID = append(c.grantID, r.GrantID)
	c.remoteAddr = append(c.remoteAddr, r.RemoteAddr)
	c.detail = append(c.detail, detail)
	c.actorType = append(c.actorType, r.ActorType)
	c.tokenExpAt = append(c.tokenExpAt, ts(iss.TokenExpiresAt))
	c.replayKey = append(c.replayKey, iss.ReplayKey)
	c.replayExpAt = append(c.replayExpAt, ts(iss.ReplayExpiresAt))
}

// args are the columns in recordIssuances' parameter order ($1 … $24).
func (c *issuanceColumns) args() []any {
	return []any{c.id, c.time, c.event, c.outcome, c.reason, c.clientID, c.agentID, c.actorSub,
		c.tenant, c.mode, c.traceID, c.sessionID, c.audience, c.requested, c.granted,
		c.envelopeJTI, c.tokenJTI, c.grantID, c.remoteAddr, c.detail, c.actorType, c.tokenExpAt,
		c.replayKey, c.replayExpAt}
}
