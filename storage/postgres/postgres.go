// Package postgres is the scale-out storage backend: storage.Store over Postgres with a pgx/v5
// connection pool, for any number of stateless Mandate replicas sharing one database.
//
// The SQL is hand-written for Postgres; the schema lives in migrations/postgres. Open does not
// migrate: an operator runs `mandate migrate up` (Store.Migrations), and `serve` refuses a
// database that is behind (Store.MigrationStatus), because replicas of different versions may
// share the database during a rollout and none of them should change the schema by surprise.
//
// Correctness under concurrency rests on Postgres, never on Go-side locks: read-modify-write
// updates lock their row (SELECT ... FOR UPDATE), replay marks rely on the primary key, and
// RecordIssuance, the token endpoint's hot path, is a single statement, as is RecordIssuances
// for a whole group-committed batch.
//
// This package must not import other storage backends or anything above storage; it is the
// only importer of pgx.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/mandatehq/mandate/migrations"
	"github.com/mandatehq/mandate/storage"
)

var _ storage.Store = (*Store)(nil)

// Options tune Open.
type Options struct {
	// MaxConns caps the pool; 0 keeps pgxpool's default (max(4, NumCPU)).
	MaxConns int32
	// Schema, when set, is the pool's search_path: Mandate's tables live in (and migrations
	// write to) that schema, which must exist. Empty keeps the server's default search_path.
	Schema string

	// configure, when set, edits the pool's configuration before it connects (tests count
	// statements and round trips with it).
	configure func(*pgxpool.Config)
}

// Store is storage.Store on Postgres. The zero value is not usable; call Open.
type Store struct {
	pool *pgxpool.Pool
	db   querier // pool, or tx on the Store handed to InTx's fn
	tx   pgx.Tx
	// channel is where AnnounceChange notifies and WatchChanges listens (see changes.go).
	channel string

	sqlOnce sync.Once
	sqlDB   *sql.DB // database/sql view of pool, for goose; made on first use
}

// querier is what *pgxpool.Pool and pgx.Tx have in common. Begin on a pgx.Tx opens a
// savepoint, which is how calls on a transaction-bound Store stay atomic on their own.
type querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Open connects to the database at url (a postgres:// URL or a libpq key=value string) and
// pings it. It does not migrate; see Migrations.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("storage/postgres: %w", err) // pgx redacts the password
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.Schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{opts.Schema}.Sanitize()
	}
	cfg.ConnConfig.BuildContextWatcherHandler = cancelOnServer
	if opts.configure != nil {
		opts.configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("storage/postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("storage/postgres: cannot reach %s:%d/%s: %w",
			cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	if opts.Schema != "" {
		// A missing schema would otherwise surface later as "relation does not exist" on
		// every call, or make goose create its table elsewhere.
		var exists bool
		err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`,
			opts.Schema).Scan(&exists)
		if err == nil && !exists {
			err = fmt.Errorf("schema %q does not exist", opts.Schema)
		}
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("storage/postgres: %w", err)
		}
	}
	channel, err := changeChannel(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("storage/postgres: %w", err)
	}
	return &Store{pool: pool, db: pool, channel: channel}, nil
}

// cancelGrace is how long a statement whose context ended may take to acknowledge its
// cancellation before its connection is dropped.
const cancelGrace = 500 * time.Millisecond

// cancelOnServer makes a statement whose context ends stop on the server too. pgx's default
// only drops the connection, and the server does not notice: a statement queued behind a
// lock would wait on, then run and commit once the lock is released, after its caller had
// been told it failed (an issuance recorded for a token never delivered, its envelope used
// up), while the pool opened a new connection for every caller that gave up. A cancel
// request stops it where it waits, and the connection stays usable. Should the server not
// answer (frozen), the connection is dropped after cancelGrace.
func cancelOnServer(c *pgconn.PgConn) ctxwatch.Handler {
	return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: cancelGrace}
}

// Migrations returns a goose provider over the Store's pool (same search_path), for
// `mandate migrate up|down|status`. Its Postgres session lock lets replicas that start
// together migrate one after the other. The Store owns the provider's database handle.
func (s *Store) Migrations() (*goose.Provider, error) {
	if s.tx != nil {
		return nil, errors.New("storage/postgres: Migrations called inside a transaction")
	}
	s.sqlOnce.Do(func() { s.sqlDB = stdlib.OpenDBFromPool(s.pool) })
	p, err := migrations.NewProvider(migrations.Postgres, s.sqlDB)
	if err != nil {
		return nil, fmt.Errorf("storage/postgres: migrations: %w", err)
	}
	return p, nil
}

// MigrationStatus reports the database's schema version against the embedded migrations,
// without taking the migration lock or changing anything but goose's version table (which
// goose creates when missing).
func (s *Store) MigrationStatus(ctx context.Context) (migrations.Status, error) {
	p, err := s.Migrations()
	if err != nil {
		return migrations.Status{}, err
	}
	st, err := migrations.Check(ctx, p)
	if err != nil {
		return migrations.Status{}, fmt.Errorf("storage/postgres: %w", err)
	}
	return st, nil
}

// Ping implements storage.Store.
func (s *Store) Ping(ctx context.Context) error {
	if s.tx != nil {
		_, err := s.tx.Exec(ctx, `SELECT 1`)
		return mapErr(err)
	}
	return mapErr(s.pool.Ping(ctx))
}

// Close implements storage.Store. On the Store handed to InTx's fn it is an error: the
// transaction's owner closes the pool.
func (s *Store) Close() error {
	if s.tx != nil {
		return errors.New("storage/postgres: Close called inside a transaction")
	}
	var err error
	if s.sqlDB != nil {
		err = s.sqlDB.Close() // does not close the pool
	}
	s.pool.Close()
	return err
}

// InTx implements storage.Store with one pgx.Tx; the Store handed to fn runs everything on it.
func (s *Store) InTx(ctx context.Context, fn func(tx storage.Store) error) (err error) {
	if s.tx != nil {
		return fn(s)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return mapErr(err)
	}
	defer func() {
		if err != nil {
			// The error that made us roll back is the one worth returning. Rollback must
			// run even when ctx is what failed.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err := fn(&Store{pool: s.pool, db: tx, tx: tx, channel: s.channel}); err != nil {
		return err
	}
	return mapErr(tx.Commit(ctx))
}

// atomic runs fn, a call of several statements, in a transaction of its own, or, on a
// transaction-bound Store, in a savepoint. fn's error is returned as is.
func (s *Store) atomic(ctx context.Context, fn func(q querier) error) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return mapErr(err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	return mapErr(tx.Commit(ctx))
}

// write runs fn, a single-statement write. On the pool a statement is atomic by itself; on a
// transaction-bound Store it goes in a savepoint, because in Postgres a failed statement
// (say, a taken id) would otherwise poison the caller's whole transaction, and callers may
// handle ErrConflict and carry on.
func (s *Store) write(ctx context.Context, fn func(q querier) error) error {
	if s.tx == nil {
		return fn(s.db)
	}
	return s.atomic(ctx, fn)
}

// mapErr is the one place driver errors become storage sentinels.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrConflict) ||
		errors.Is(err, storage.ErrBadCursor) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return storage.ErrNotFound
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
		return fmt.Errorf("%w: %s", storage.ErrConflict, pe.ConstraintName)
	}
	if unreachable(err) {
		return fmt.Errorf("%w: storage/postgres: %w", storage.ErrUnavailable, err)
	}
	return fmt.Errorf("storage/postgres: %w", err)
}

// unreachable reports errors that say the database did not answer (rather than refused):
// no connection, or none in time. 57014 is query_canceled, which is what a statement
// cancelled at its deadline reports.
func unreachable(err error) bool {
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	var ne net.Error
	return errors.As(err, &ce) || pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &pe) && pe.Code == "57014") || errors.As(err, &ne)
}

// notFoundUnlessChanged turns "no row changed" into ErrNotFound.
func notFoundUnlessChanged(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return mapErr(err)
	}
	if tag.RowsAffected() == 0 {
		return storage.ErrNotFound
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Column encodings (see migrations/postgres/00001_init.sql).

// ts is the time as stored: UTC, truncated to the microsecond like the SQLite backend (Postgres
// would round instead).
func ts(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// nullTS encodes a time for a nullable column: the zero time is NULL.
func nullTS(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = ts(t)
	return &t
}

// timeCol scans a timestamptz (or NULL) into a UTC time; NULL is the zero time.
type timeCol struct{ t *time.Time }

func (c timeCol) ScanTimestamptz(v pgtype.Timestamptz) error {
	if !v.Valid {
		*c.t = time.Time{}
		return nil
	}
	*c.t = v.Time.UTC()
	return nil
}

func seconds(d time.Duration) int64 { return int64(d / time.Second) }

// secondsCol scans whole seconds into a duration.
type secondsCol struct{ d *time.Duration }

func (c secondsCol) ScanInt64(v pgtype.Int8) error {
	if !v.Valid {
		return errors.New("duration column is NULL")
	}
	*c.d = time.Duration(v.Int64) * time.Second
	return nil
}

// list encodes a string list for a text[] NOT NULL column: nil is '{}', not NULL.
func list(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

// nilEmpty makes each empty scanned list nil, as the SQLite backend returns them.
func nilEmpty(ls ...*[]string) {
	for _, l := range ls {
		if len(*l) == 0 {
			*l = nil
		}
	}
}

// nullBytes encodes bytes for a nullable bytea or jsonb column: empty is NULL.
func nullBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// rowScanner is a pgx.Row or pgx.Rows.
type rowScanner interface{ Scan(dest ...any) error }

// collect scans every row with scan and closes rows.
func collect[T any](rows pgx.Rows, err error, scan func(rowScanner) (*T, error)) ([]T, error) {
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	var items []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		items = append(items, *v)
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr(err)
	}
	return items, nil
}

// where builds a WHERE clause from the filters a call was given: each condition is written
// with %s for its placeholders, numbered here. Only the conditions in use reach the SQL, so
// the planner sees (and pgx caches) one plain statement per combination of filters.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	ph := make([]any, len(args))
	for i, a := range args {
		w.args = append(w.args, a)
		ph[i] = "$" + strconv.Itoa(len(w.args))
	}
	w.conds = append(w.conds, fmt.Sprintf(cond, ph...))
}

// eq adds col = v when v is set.
func (w *where) eq(col, v string) {
	if v != "" {
		w.add(col+" = %s", v)
	}
}

// sql is the clause, with a leading WHERE, or "" when nothing filters.
func (w *where) sql() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// next is the placeholder for one more argument after the conditions' (LIMIT's).
func (w *where) next(arg any) string {
	w.args = append(w.args, arg)
	return "$" + strconv.Itoa(len(w.args))
}
