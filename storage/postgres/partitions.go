package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/mandatehq/mandate/storage"
)

// The audit log is partitioned by UTC day (migration 00006). A day's partition is named
// audit_log_pYYYYMMDD and holds [that day, the next); audit_log_history holds everything
// before the upgrade's day partitions, audit_log_default whatever no partition covers.
const (
	dayLayout      = "20060102"
	dayPartPrefix  = "audit_log_p"
	pruneBatchRows = 5000
	// dropLockTimeout bounds how long dropping a partition may wait for the parent's lock.
	// Waiting queues every write behind it, so after this long the drop gives up and is
	// retried at the next run instead of stalling the token endpoint. attachLockTimeout does
	// the same for attaching the partition of a day that has begun (see addDayPartition).
	dropLockTimeout   = "100ms"
	attachLockTimeout = "100ms"
	// freeBytesPerSecond paces a dropped partition's files: after each index, and the table
	// last, that leaves it waits for its size at this rate before the next piece goes (see
	// dropPartition).
	freeBytesPerSecond = 512 << 20
)

var dayPartName = regexp.MustCompile(`^audit_log_p([0-9]{8})$`)

func dayPartition(day time.Time) string { return dayPartPrefix + day.Format(dayLayout) }

// PrepareAuditLog implements storage.AuditStore: a partition for each day from the day
// before now's to AuditDaysAhead after it, each made and attached on its own.
func (s *Store) PrepareAuditLog(ctx context.Context, now time.Time) error {
	today := storage.AuditDay(now)
	var errs []error
	for d := -1; d <= storage.AuditDaysAhead; d++ {
		errs = append(errs, s.addDayPartition(ctx, today.AddDate(0, 0, d), d <= 0))
	}
	return errors.Join(errs...)
}

// addDayPartition makes day's partition unless one exists or another partition covers the
// day (audit_log_history does for the days of the upgrade). The table is made apart and then
// attached, because ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on the log (writes go on)
// where CREATE TABLE … PARTITION OF would take an exclusive one. Records of that day that
// landed in audit_log_default move into it first: attaching needs the default free of them,
// and nothing may be lost.
//
// A day that has begun (the log is new, or the maintenance fell behind) may be taking
// records right now, and its records in audit_log_default move: an insert routed to the
// default partition before the attach would fail after it, and a read planned before the
// attach would look for a moved record where it no longer is. So for such a day, and for any
// day whose records sit in the default partition, the log is locked for the few milliseconds
// of the move and the attach (ACCESS EXCLUSIVE: reads and writes wait, then plan again). The
// lock is waited for attachLockTimeout at most; then this day is left for the next run. Days
// ahead, the usual case, take no records yet and no lock.
func (s *Store) addDayPartition(ctx context.Context, day time.Time, begun bool) error {
	name := dayPartition(day)
	from, to := ts(day), ts(day.AddDate(0, 0, 1))
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Replicas prepare the same days: one at a time, per schema.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('mandate.audit_log.' || current_schema()))`); err != nil {
			return err
		}
		// Made already, or inside audit_log_history's range (it ends at the day after the
		// upgrade's newest record): asked before any lock, so that the days the history
		// covers do not lock the log every hour only to find the overlap at the attach.
		var exists bool
		err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL OR EXISTS (
			SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'audit_log'::regclass AND c.relname = 'audit_log_history'
			AND substring(pg_get_expr(c.relpartbound, c.oid) from 'TO \(''(.*)''\)')::timestamptz > $2)`,
			name, from).Scan(&exists)
		if err != nil || exists {
			return err
		}
		if !begun {
			err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM audit_log_default WHERE time >= $1 AND time < $2)`,
				from, to).Scan(&begun)
			if err != nil {
				return err
			}
		}
		if begun {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+attachLockTimeout+`'`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE`); err != nil {
				return err
			}
		}
		stmts := []string{
			fmt.Sprintf(`CREATE TABLE %s (LIKE audit_log INCLUDING DEFAULTS)`, name),
			fmt.Sprintf(`WITH moved AS (DELETE FROM audit_log_default WHERE time >= '%s' AND time < '%s' RETURNING *)
				INSERT INTO %s (%s, token_expires_at) SELECT %s, token_expires_at FROM moved`,
				pgTime(from), pgTime(to), name, auditCols, auditCols),
			fmt.Sprintf(`ALTER TABLE audit_log ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')`,
				name, pgTime(from), pgTime(to)),
		}
		for _, sql := range stmts {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		return nil
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P17" { // invalid_object_definition: would overlap
		return nil // another partition covers the day
	}
	if err != nil {
		return fmt.Errorf("storage/postgres: audit partition %s: %w", name, mapErr(err))
	}
	return nil
}

// PruneAudit implements storage.AuditStore: drop the day partitions that end by before's
// day, then delete what older records the other partitions hold, a batch per statement.
// One replica prunes at a time: a drop takes seconds (its pauses), and replicas that started
// together would otherwise drop the same indexes and fail on each other's. The others find
// the lock taken and prune nothing; the next hour's run is theirs if needed.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (storage.AuditPruned, error) {
	var out storage.AuditPruned
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return out, fmt.Errorf("storage/postgres: prune the audit log: %w", mapErr(err))
	}
	defer conn.Release()
	var mine bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('mandate.audit_log.prune.' || current_schema()))`).Scan(&mine); err != nil {
		return out, fmt.Errorf("storage/postgres: prune the audit log: %w", mapErr(err))
	}
	if !mine {
		return out, nil
	}
	defer func() {
		// Unlocked even when ctx has ended; a connection that cannot say so is closed, which
		// releases the lock too.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(hashtext('mandate.audit_log.prune.' || current_schema()))`); err != nil {
			_ = conn.Conn().Close(uctx)
		}
	}()
	cutoff := storage.AuditDay(before)
	// The day tables, attached or left detached by a drop that stopped halfway, and the
	// log's other partitions.
	rows, err := s.pool.Query(ctx, `SELECT c.relname, c.relispartition
		FROM pg_class c
		WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
		AND (c.relname LIKE 'audit_log\_p%' OR c.oid IN (
			SELECT inhrelid FROM pg_inherits WHERE inhparent = 'audit_log'::regclass))
		ORDER BY c.relname`)
	type table struct {
		name     string
		attached bool
	}
	var tables []table
	if err == nil {
		tables, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (table, error) {
			var t table
			return t, r.Scan(&t.name, &t.attached)
		})
	}
	if err != nil {
		return out, fmt.Errorf("storage/postgres: list audit partitions: %w", mapErr(err))
	}
	var others []string
	for _, t := range tables {
		m := dayPartName.FindStringSubmatch(t.name)
		if m == nil {
			if t.attached {
				others = append(others, t.name)
			}
			continue
		}
		day, err := time.Parse(dayLayout, m[1])
		if err != nil || day.AddDate(0, 0, 1).After(cutoff) {
			continue
		}
		dropped, err := s.dropPartition(ctx, t.name, t.attached)
		if dropped { // even when the pause after it was cut short
			out.Partitions = append(out.Partitions, t.name)
		}
		if err != nil {
			return out, err
		}
	}
	for _, p := range others {
		// ctid batches: each statement is short, so the writes to that partition (only
		// stray records reach the default one) wait for one batch at most.
		sql := fmt.Sprintf(`DELETE FROM %s WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM %s WHERE time < $1 LIMIT %d))`, pgx.Identifier{p}.Sanitize(),
			pgx.Identifier{p}.Sanitize(), pruneBatchRows)
		for {
			tag, err := s.pool.Exec(ctx, sql, ts(cutoff))
			if err != nil {
				return out, fmt.Errorf("storage/postgres: prune %s: %w", p, mapErr(err))
			}
			out.Rows += tag.RowsAffected()
			if tag.RowsAffected() < pruneBatchRows {
				break
			}
		}
	}
	return out, nil
}

// dropPartition removes a day partition. DETACH needs the log's exclusive lock but changes
// only the catalog, so writes wait for it a moment; it waits for the lock dropLockTimeout at
// most and otherwise reports false (the next run tries again). The detached table is then
// dropped piece by piece — each index, then the table — pausing after each for its size at
// freeBytesPerSecond: a file system that discards freed blocks as it frees them (ext4 with
// `discard`, this project's test machine's) stalls every fsync while it frees, the WAL's
// included. Measured there under full load, a day of 3.6 million records (a 1.4 GB table,
// six indexes of 200-275 MB) raised the worst 2-second slice's p99 from about 6 ms to 40 ms
// dropped at once, to 20 ms piece by piece, all of that while the table went (README, Audit
// log retention).
// A drop that fails or is cancelled after the detach leaves the table detached, perhaps
// without some indexes; the next run finds it by its name.
func (s *Store) dropPartition(ctx context.Context, name string, attached bool) (bool, error) {
	ident := pgx.Identifier{name}.Sanitize()
	if attached {
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+dropLockTimeout+`'`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `ALTER TABLE audit_log DETACH PARTITION `+ident)
			return err
		})
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("storage/postgres: detach audit partition %s: %w", name, mapErr(err))
		}
	}
	// The detached table's indexes; one that backs a constraint (the primary key) goes by
	// dropping the constraint.
	rows, err := s.pool.Query(ctx, `SELECT i.relname, coalesce(c.conname, ''), pg_relation_size(i.oid)
		FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
		LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
		WHERE x.indrelid = $1::regclass
		ORDER BY i.relname`, ident)
	type piece struct {
		index, constraint string
		size              int64
	}
	var pieces []piece
	if err == nil {
		pieces, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (piece, error) {
			var p piece
			return p, r.Scan(&p.index, &p.constraint, &p.size)
		})
	}
	if err != nil {
		return false, fmt.Errorf("storage/postgres: list the indexes of audit partition %s: %w", name, mapErr(err))
	}
	for _, p := range pieces {
		stmt := `DROP INDEX ` + pgx.Identifier{p.index}.Sanitize()
		if p.constraint != "" {
			stmt = `ALTER TABLE ` + ident + ` DROP CONSTRAINT ` + pgx.Identifier{p.constraint}.Sanitize()
		}
		if _, err := s.pool.Exec(ctx, stmt); err != nil {
			return false, fmt.Errorf("storage/postgres: drop index %s of audit partition %s: %w", p.index, name, mapErr(err))
		}
		if err := pause(ctx, p.size); err != nil {
			return false, err
		}
	}
	var size int64
	if err := s.pool.QueryRow(ctx, `SELECT pg_table_size($1::regclass)`, ident).Scan(&size); err != nil {
		return false, fmt.Errorf("storage/postgres: size of audit partition %s: %w", name, mapErr(err))
	}
	if _, err := s.pool.Exec(ctx, `DROP TABLE `+ident); err != nil {
		return false, fmt.Errorf("storage/postgres: drop audit partition %s: %w", name, mapErr(err))
	}
	// Paced like the indexes, so that the next day dropped in the same run waits too.
	return true, pause(ctx, size)
}

// pause waits while the file system frees size bytes (at freeBytesPerSecond), or until ctx
// ends.
func pause(ctx context.Context, size int64) error {
	d := time.Duration(float64(size) / freeBytesPerSecond * float64(time.Second))
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pgTime is t as a timestamptz literal (DDL takes no parameters).
func pgTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.999999Z07:00") }
