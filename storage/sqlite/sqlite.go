// Package sqlite is the embedded storage backend: storage.Store over one SQLite file with
// modernc.org/sqlite (pure Go, no cgo), for single-node deployments and for `mandate serve`
// out of the box.
//
// The SQL is hand-written for SQLite; the schema lives in migrations/sqlite and is applied at
// Open. SQLite allows one writer at a time, so the Store keeps two pools: a single write
// connection, on which every write and every transaction runs (BEGIN IMMEDIATE, so a
// read-modify-write transaction holds the write lock from its first statement and cannot fail
// to upgrade it later), and a pool of query-only connections for reads outside a transaction,
// which WAL lets run alongside the writer. Writers of this process queue in Go for the one
// connection; busy_timeout covers other processes on the same file.
//
// This package must not import other storage backends or anything above storage; it is the
// only importer of the SQLite driver.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/mandatehq/mandate/migrations"
	"github.com/mandatehq/mandate/storage"
)

var _ storage.Store = (*Store)(nil)

// Store is storage.Store on one SQLite file. The zero value is not usable; call Open.
type Store struct {
	write *sql.DB // exactly one connection
	read  *sql.DB // query_only connections
	hot   *hotStmts
	tx    *sql.Tx // set on the Store handed to InTx's fn: everything then runs in tx
	busy  time.Duration
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// DefaultBusyTimeout bounds how long a connection waits for a lock another process holds,
// unless Options say otherwise.
const DefaultBusyTimeout = 10 * time.Second

// Options tune OpenWith.
type Options struct {
	// BusyTimeout bounds how long a statement waits for a lock another process holds (SQLite's
	// busy_timeout); then it fails with storage.ErrUnavailable. SQLite does not stop that wait
	// when a call's context ends, so a caller that bounds calls with deadlines sets this to
	// its deadline. Zero means DefaultBusyTimeout.
	BusyTimeout time.Duration
}

// Open is OpenWith with default Options.
func Open(ctx context.Context, path string) (*Store, error) {
	return OpenWith(ctx, path, Options{})
}

// OpenWith opens the SQLite database file at path, creating it if needed, and applies pending
// migrations. In-memory databases are refused: database/sql would give every pooled
// connection its own empty database.
func OpenWith(ctx context.Context, path string, opts Options) (*Store, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	if err := createOwnerOnly(path); err != nil {
		return nil, err
	}
	busy := opts.BusyTimeout
	if busy <= 0 {
		busy = DefaultBusyTimeout
	}
	busyMS := max(1, busy.Milliseconds())

	// Migrate on a connection of its own and close it, so goose's connection handling never
	// competes with the single write connection. Migrating waits the default time for other
	// processes: it runs once, at start.
	mdb, err := openDB(path, writeParams(DefaultBusyTimeout.Milliseconds()), 1)
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, mdb); err != nil {
		_ = mdb.Close()
		return nil, err
	}
	if err := mdb.Close(); err != nil {
		return nil, fmt.Errorf("storage/sqlite: close migration connection: %w", err)
	}

	write, err := openDB(path, writeParams(busyMS), 1)
	if err != nil {
		return nil, err
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	read, err := openDB(path, readParams(busyMS), readers)
	if err != nil {
		_ = write.Close()
		return nil, err
	}
	hot, err := prepareHot(ctx, write)
	if err != nil {
		_ = errors.Join(write.Close(), read.Close())
		return nil, err
	}
	s := &Store{write: write, read: read, hot: hot, busy: busy}
	if err := s.Ping(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func checkPath(path string) error {
	switch {
	case path == "":
		return errors.New("storage/sqlite: empty database path")
	case path == ":memory:", strings.Contains(path, "mode=memory"):
		return errors.New("storage/sqlite: in-memory databases are not supported; give a file path")
	case strings.HasPrefix(path, "file:"), strings.ContainsRune(path, '?'):
		// The driver splits the DSN at '?' and this package owns the parameters.
		return fmt.Errorf("storage/sqlite: give a plain file path, not a URI: %q", path)
	}
	return nil
}

// createOwnerOnly creates the database file, empty, with mode 0600 when it does not exist:
// it holds client-secret hashes and sealed signing keys, and SQLite would create it with the
// process umask (0644 is common). SQLite gives its -wal and -shm files the database file's
// mode, so they follow. An existing file's mode is the operator's and is left alone.
func createOwnerOnly(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		return nil
	case err != nil:
		return fmt.Errorf("storage/sqlite: create %s: %w", path, err)
	}
	return f.Close()
}

func writeParams(busyMS int64) url.Values {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyMS))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return q
}

func readParams(busyMS int64) url.Values {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyMS))
	q.Add("_pragma", "foreign_keys(1)")
	// A write that slips onto the read pool would bypass the writer queue; make it fail.
	q.Add("_pragma", "query_only(1)")
	return q
}

func openDB(path string, q url.Values, conns int) (*sql.DB, error) {
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("storage/sqlite: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	return db, nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	p, err := migrations.NewProvider(migrations.SQLite, db)
	if err != nil {
		return fmt.Errorf("storage/sqlite: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("storage/sqlite: migrate: %w", err)
	}
	return nil
}

// MigrationStatus reports the schema version of the file against the embedded migrations.
func (s *Store) MigrationStatus(ctx context.Context) (migrations.Status, error) {
	p, err := migrations.NewProvider(migrations.SQLite, s.read)
	if err != nil {
		return migrations.Status{}, fmt.Errorf("storage/sqlite: migrations: %w", err)
	}
	return migrations.Check(ctx, p)
}

// Ping implements storage.Store.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.reader().QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return mapErr(err)
	}
	return nil
}

// Close implements storage.Store. On the Store handed to InTx's fn it is an error: the
// transaction's owner closes the pools.
func (s *Store) Close() error {
	if s.tx != nil {
		return errors.New("storage/sqlite: Close called inside a transaction")
	}
	return errors.Join(s.hot.close(), s.write.Close(), s.read.Close())
}

// reader is where a read outside a transaction goes.
func (s *Store) reader() querier {
	if s.tx != nil {
		return s.tx
	}
	return s.read
}

// writer is where a single-statement write goes.
func (s *Store) writer() querier {
	if s.tx != nil {
		return s.tx
	}
	return s.write
}

// InTx implements storage.Store. fn must do all its work through the Store it is handed: the
// transaction holds the one write connection, so a write through the outer Store would wait
// for fn to finish, and fn for it.
func (s *Store) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	return s.withTx(ctx, func(tx *sql.Tx) error {
		return fn(&Store{write: s.write, read: s.read, hot: s.hot, tx: tx, busy: s.busy})
	})
}

// withTx runs fn in a write transaction. fn's error is returned as is; the transaction's own
// errors go through mapErr. On a Store bound to InTx's transaction, fn runs inside a
// savepoint of it, so a multi-statement call that fails (say, CreateAudience on a taken
// resource URI) leaves nothing half-written even if the caller goes on and commits.
func (s *Store) withTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	if s.tx != nil {
		return withSavepoint(ctx, s.tx, fn)
	}
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return mapErr(err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = tx.Rollback() // the error that made us roll back is the one worth returning
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return mapErr(err)
	}
	committed = true
	return nil
}

func withSavepoint(ctx context.Context, tx *sql.Tx, fn func(tx *sql.Tx) error) error {
	if _, err := tx.ExecContext(ctx, `SAVEPOINT store_op`); err != nil {
		return mapErr(err)
	}
	if err := fn(tx); err != nil {
		// ROLLBACK TO keeps the savepoint open; RELEASE then closes it. Both must run even
		// when ctx is what failed.
		uctx := context.WithoutCancel(ctx)
		_, _ = tx.ExecContext(uctx, `ROLLBACK TO store_op`)
		_, _ = tx.ExecContext(uctx, `RELEASE store_op`)
		return err
	}
	if _, err := tx.ExecContext(ctx, `RELEASE store_op`); err != nil {
		return mapErr(err)
	}
	return nil
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
	if errors.Is(err, sql.ErrNoRows) {
		return storage.ErrNotFound
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return fmt.Errorf("%w: %s", storage.ErrConflict, se.Error())
		}
		// Busy (and its extended codes): another process held the lock past busy_timeout.
		// Interrupted: the call's context ended while the statement ran.
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_INTERRUPT:
			return fmt.Errorf("%w: storage/sqlite: %w", storage.ErrUnavailable, err)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: storage/sqlite: %w", storage.ErrUnavailable, err)
	}
	return fmt.Errorf("storage/sqlite: %w", err)
}

// notFoundUnlessChanged turns "no row changed" into ErrNotFound.
func notFoundUnlessChanged(res sql.Result, err error) error {
	if err != nil {
		return mapErr(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return mapErr(err)
	}
	if n == 0 {
		return storage.ErrNotFound
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Column encodings (see migrations/sqlite/00001_init.sql).

// micros encodes a time as Unix microseconds, the precision both backends share.
func micros(t time.Time) int64 { return t.UnixMicro() }

// nullMicros encodes a time for a nullable column: the zero time is NULL.
func nullMicros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// timeCol scans an INTEGER (or NULL) microsecond column into a UTC time.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.t = time.Time{}
	case int64:
		*c.t = time.UnixMicro(v).UTC() // the zero time survives: it is a whole microsecond
	default:
		return fmt.Errorf("time column holds %T", v)
	}
	return nil
}

func seconds(d time.Duration) int64 { return int64(d / time.Second) }

// secondsCol scans whole seconds into a duration.
type secondsCol struct{ d *time.Duration }

func (c secondsCol) Scan(v any) error {
	n, ok := v.(int64)
	if !ok {
		return fmt.Errorf("duration column holds %T", v)
	}
	*c.d = time.Duration(n) * time.Second
	return nil
}

// list encodes a string list as a JSON array; nil is "[]".
func list(l []string) string {
	if len(l) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(l) // a []string always marshals
	return string(b)
}

// listCol scans a JSON array column; an empty array comes back nil.
type listCol struct{ l *[]string }

func (c listCol) Scan(v any) error {
	var raw []byte
	switch v := v.(type) {
	case nil:
		*c.l = nil
		return nil
	case string:
		raw = []byte(v)
	case []byte:
		raw = v
	default:
		return fmt.Errorf("list column holds %T", v)
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		return fmt.Errorf("list column: %w", err)
	}
	if len(l) == 0 {
		l = nil
	}
	*c.l = l
	return nil
}

// nullText encodes bytes (JSON) for a nullable TEXT column: empty is NULL. STRICT tables
// refuse a BLOB in a TEXT column, hence the string.
func nullText(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// nullBlob encodes bytes for a nullable BLOB column: empty is NULL.
func nullBlob(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// bytesCol scans TEXT, BLOB or NULL into a fresh byte slice (the driver's buffer is reused).
type bytesCol struct{ b *[]byte }

func (c bytesCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.b = nil
	case string:
		*c.b = []byte(v)
	case []byte:
		*c.b = append([]byte(nil), v...)
	default:
		return fmt.Errorf("bytes column holds %T", v)
	}
	return nil
}
