package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/server"
	"github.com/mandatehq/mandate/throttle"
)

// config is everything serve needs, from flags and their MANDATE_* variables. Secrets come
// only from the environment (or a file named there), never from flag values, so they do not
// show in process listings.
type config struct {
	Issuer           string
	PublicAddr       string
	AdminAddr        string
	Database         string
	DatabaseMaxConns int
	DatabaseTimeout  time.Duration
	MaxActDepth      int
	AuditRetention   time.Duration
	AutoMigrate      bool
	SigningAlg       string
	KeyRotation      time.Duration
	KeyPublishAhead  time.Duration
	ShutdownTimeout  time.Duration
	LogLevel         string
	LogFormat        string
	LogRepeat        time.Duration
	Pprof            bool
	OIDCIssuer       string
	OIDCClientID     string
	OIDCTenantClaim  string
	// AllowLoopbackJWKSURI: development only.
	AllowLoopbackJWKSURI bool
	// Failed client authentications, per remote address.
	AuthFailureBurst        int
	AuthFailureInterval     time.Duration
	AuthFailureMaxAddresses int

	OIDCClientSecret     string // MANDATE_OIDC_CLIENT_SECRET (or MANDATE_OIDC_CLIENT_SECRET_FILE)
	Secret               string // MANDATE_SECRET
	SecretFile           string // MANDATE_SECRET_FILE
	BootstrapAdminSecret string // MANDATE_BOOTSTRAP_ADMIN_SECRET
}

const defaultDatabase = "mandate.db"

// isPostgres reports whether a --database value selects Postgres (SPEC §9).
func isPostgres(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// flagEnv binds flag names to their environment variables.
type flagEnv struct {
	fs      *flag.FlagSet
	env     map[string]string // flag name → variable
	summary string            // one line for --help
	vars    []envVar          // variables read without a flag, for --help
}

func newFlagSet(name string, stdout io.Writer) *flagEnv {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are ours to word; -h prints below
	fe := &flagEnv{fs: fs, env: map[string]string{}}
	fs.Usage = func() {
		summary := fe.summary
		if summary == "" {
			summary = summaryOf(name)
		}
		titleLine(stdout, "mandate "+name+" [flags]", summary)
		printFlags(stdout, fs, func(f string) string { return fe.env[f] }, fe.vars)
	}
	return fe
}

// describe sets what --help says besides the flags.
func (fe *flagEnv) describe(summary string, vars ...envVar) {
	fe.summary, fe.vars = summary, vars
}

func (fe *flagEnv) string(p *string, name, env, def, usage string) {
	fe.fs.StringVar(p, name, def, usage)
	fe.env[name] = env
}

func (fe *flagEnv) int(p *int, name, env string, def int, usage string) {
	fe.fs.IntVar(p, name, def, usage)
	fe.env[name] = env
}

func (fe *flagEnv) bool(p *bool, name, env string, def bool, usage string) {
	fe.fs.BoolVar(p, name, def, usage)
	fe.env[name] = env
}

func (fe *flagEnv) duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	fe.fs.DurationVar(p, name, def, usage)
	fe.env[name] = env
}

// days binds a duration flag that also takes whole days ("400d"), the unit retention is
// thought in; Go's durations stop at hours.
func (fe *flagEnv) days(p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	fe.fs.Var((*daysValue)(p), name, usage)
	fe.env[name] = env
}

type daysValue time.Duration

func (d *daysValue) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*366 {
			return fmt.Errorf("%q is not a number of days", s)
		}
		*d = daysValue(time.Duration(days) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is neither days (400d) nor a duration (9600h)", s)
	}
	*d = daysValue(v)
	return nil
}

// String shows whole days as days, so --help prints the default as 400d.
func (d *daysValue) String() string {
	v := time.Duration(*d)
	if v%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"
	}
	return v.String()
}

// parse reads the command line, then fills every flag not given there from its variable.
// A bad value is one line naming the flag and its variable.
func (fe *flagEnv) parse(args []string, getenv func(string) string) error {
	// On -h, flag.Parse has already printed fs.Usage.
	if err := parseFlags(fe.fs, args); err != nil {
		return err
	}
	given := map[string]bool{}
	fe.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fe.fs.VisitAll(func(f *flag.Flag) {
		env := fe.env[f.Name]
		if err != nil || given[f.Name] || env == "" {
			return
		}
		if v := getenv(env); v != "" {
			if e := fe.fs.Set(f.Name, v); e != nil {
				err = usagef("invalid value %q for %s (--%s): %v", v, env, f.Name, e)
			}
		}
	})
	return err
}

func parseServeConfig(args []string, getenv func(string) string, stdout io.Writer) (*config, error) {
	c := &config{}
	fe := newFlagSet("serve", stdout)
	fe.describe("Runs Mandate: the public listener (token, introspection, revocation, metadata, JWKS,\n"+
		"health) and the admin listener (/admin/v1, /metrics). With no flags it uses the SQLite file\n"+
		"mandate.db and prints the bootstrap admin credentials on its first start.", serveEnv...)
	c.bindShared(fe)
	fe.string(&c.Issuer, "issuer", "MANDATE_ISSUER", "http://localhost:8080", "issuer URL (no trailing slash); envelopes' aud must equal it")
	fe.string(&c.PublicAddr, "public-addr", "MANDATE_PUBLIC_ADDR", ":8080", "public listener: token, introspection, revocation, metadata, JWKS")
	fe.string(&c.AdminAddr, "admin-addr", "MANDATE_ADMIN_ADDR", "127.0.0.1:8081", "admin listener: /admin/v1 and /metrics")
	fe.bool(&c.AutoMigrate, "auto-migrate", "MANDATE_AUTO_MIGRATE", false, "apply pending Postgres migrations at start (SQLite always migrates)")
	fe.string(&c.SigningAlg, "signing-alg", "MANDATE_SIGNING_ALG", "ES256", "token signing algorithm: ES256 or EdDSA")
	fe.duration(&c.KeyRotation, "key-rotation", "MANDATE_KEY_ROTATION", 30*24*time.Hour, "rotate the signing key this often")
	fe.duration(&c.KeyPublishAhead, "key-publish-ahead", "MANDATE_KEY_PUBLISH_AHEAD", 15*time.Minute, "publish a new key this long before it signs")
	fe.duration(&c.ShutdownTimeout, "shutdown-timeout", "MANDATE_SHUTDOWN_TIMEOUT", 15*time.Second, "how long in-flight requests may finish at shutdown")
	fe.string(&c.LogLevel, "log-level", "MANDATE_LOG_LEVEL", "info", "debug, info, warn or error")
	fe.string(&c.LogFormat, "log-format", "MANDATE_LOG_FORMAT", "auto", "text, json, or auto (text on a terminal, JSON otherwise)")
	fe.duration(&c.LogRepeat, "log-repeat-interval", "MANDATE_LOG_REPEAT_INTERVAL", server.DefaultRepeatInterval, "log a repeated warning or error once per interval, with a count (0: every time)")
	fe.duration(&c.DatabaseTimeout, "database-timeout", "MANDATE_DATABASE_TIMEOUT", server.DefaultDatabaseTimeout, "longest wait for the database per call (connection and locks included); then 503")
	fe.int(&c.MaxActDepth, "max-act-depth", "MANDATE_MAX_ACT_DEPTH", exchange.DefaultMaxActDepth, "deepest act chain an on_behalf_of token may carry, the agent included (1: no envelope act chain at all)")
	fe.days(&c.AuditRetention, "audit-retention", "MANDATE_AUDIT_RETENTION", server.DefaultAuditRetention,
		"how long audit records are kept: days (400d) or a duration (9600h), at least a day; 0 keeps every record")
	fe.bool(&c.Pprof, "pprof", "MANDATE_PPROF", false, "serve /debug/pprof on the admin listener")
	fe.string(&c.OIDCIssuer, "oidc-issuer", "MANDATE_OIDC_ISSUER", "", "the organisation's OpenID Connect provider, for the consent pages (none: sign-in is off)")
	fe.string(&c.OIDCClientID, "oidc-client-id", "MANDATE_OIDC_CLIENT_ID", "", "Mandate's client id at that provider (secret: MANDATE_OIDC_CLIENT_SECRET)")
	fe.string(&c.OIDCTenantClaim, "oidc-tenant-claim", "MANDATE_OIDC_TENANT_CLAIM", "tenant", "the ID token claim naming the user's tenant")
	fe.bool(&c.AllowLoopbackJWKSURI, "allow-loopback-jwks-uri", "MANDATE_ALLOW_LOOPBACK_JWKS_URI", false,
		"development: let jwks_uri name loopback hosts, http:// too (never private or link-local ones)")
	fe.int(&c.AuthFailureBurst, "auth-failure-burst", "MANDATE_AUTH_FAILURE_BURST", throttle.DefaultBurst,
		"failed client authentications a remote address may make in a row before it is answered 429 (0: never throttle)")
	fe.duration(&c.AuthFailureInterval, "auth-failure-interval", "MANDATE_AUTH_FAILURE_INTERVAL", throttle.DefaultInterval,
		"a throttled address may try again once per interval")
	fe.int(&c.AuthFailureMaxAddresses, "auth-failure-max-addresses", "MANDATE_AUTH_FAILURE_MAX_ADDRESSES", throttle.DefaultMaxAddresses,
		"remote addresses tracked at once (IPv6 by /64), per replica")
	if err := fe.parse(args, getenv); err != nil {
		return nil, err
	}
	c.OIDCClientSecret = getenv("MANDATE_OIDC_CLIENT_SECRET")
	if f := getenv("MANDATE_OIDC_CLIENT_SECRET_FILE"); f != "" && c.OIDCClientSecret == "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, usagef("MANDATE_OIDC_CLIENT_SECRET_FILE: %v", err)
		}
		c.OIDCClientSecret = strings.TrimSpace(string(b))
	}
	c.Secret = getenv("MANDATE_SECRET")
	c.SecretFile = getenv("MANDATE_SECRET_FILE")
	c.BootstrapAdminSecret = getenv("MANDATE_BOOTSTRAP_ADMIN_SECRET")
	return c, c.validate()
}

// bindShared binds the flags serve and migrate have in common.
func (c *config) bindShared(fe *flagEnv) {
	fe.string(&c.Database, "database", "MANDATE_DATABASE_URL", defaultDatabase, "postgres://… or postgresql://… for Postgres; anything else is a SQLite file path")
	fe.int(&c.DatabaseMaxConns, "database-max-conns", "MANDATE_DATABASE_MAX_CONNS", 16, "Postgres connection pool size")
}

func (c *config) validate() error {
	u, err := url.Parse(c.Issuer)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(c.Issuer, "/") {
		return usagef("invalid --issuer (MANDATE_ISSUER) %q: an absolute http(s) URL without query, fragment or trailing slash", c.Issuer)
	}
	if c.SigningAlg != "ES256" && c.SigningAlg != "EdDSA" {
		return usagef("invalid --signing-alg (MANDATE_SIGNING_ALG) %q: ES256 or EdDSA", c.SigningAlg)
	}
	if c.DatabaseMaxConns < 1 {
		return usagef("invalid --database-max-conns (MANDATE_DATABASE_MAX_CONNS) %d: at least 1", c.DatabaseMaxConns)
	}
	if c.Database == "" {
		return usagef("--database (MANDATE_DATABASE_URL) is empty")
	}
	if c.MaxActDepth < 1 || c.MaxActDepth > 32 {
		return usagef("invalid --max-act-depth (MANDATE_MAX_ACT_DEPTH) %d: between 1 and 32", c.MaxActDepth)
	}
	if c.AuditRetention != 0 && c.AuditRetention < 24*time.Hour {
		return usagef("invalid --audit-retention (MANDATE_AUDIT_RETENTION) %s: at least a day (1d), or 0 to keep every record", c.AuditRetention)
	}
	if c.DatabaseTimeout < 100*time.Millisecond {
		return usagef("invalid --database-timeout (MANDATE_DATABASE_TIMEOUT) %s: at least 100ms", c.DatabaseTimeout)
	}
	if c.LogRepeat < 0 {
		return usagef("invalid --log-repeat-interval (MANDATE_LOG_REPEAT_INTERVAL) %s: 0 or more", c.LogRepeat)
	}
	if c.KeyRotation < time.Hour {
		return usagef("invalid --key-rotation (MANDATE_KEY_ROTATION) %s: at least 1h", c.KeyRotation)
	}
	if c.KeyPublishAhead < 0 || c.KeyPublishAhead >= c.KeyRotation {
		return usagef("invalid --key-publish-ahead (MANDATE_KEY_PUBLISH_AHEAD) %s: between 0 and --key-rotation", c.KeyPublishAhead)
	}
	if c.AuthFailureBurst < 0 {
		return usagef("invalid --auth-failure-burst (MANDATE_AUTH_FAILURE_BURST) %d: 0 or more", c.AuthFailureBurst)
	}
	if c.AuthFailureInterval < time.Millisecond {
		return usagef("invalid --auth-failure-interval (MANDATE_AUTH_FAILURE_INTERVAL) %s: at least 1ms", c.AuthFailureInterval)
	}
	if c.AuthFailureMaxAddresses < 1 {
		return usagef("invalid --auth-failure-max-addresses (MANDATE_AUTH_FAILURE_MAX_ADDRESSES) %d: at least 1", c.AuthFailureMaxAddresses)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		return usagef("invalid --log-format (MANDATE_LOG_FORMAT) %q: text, json or auto", c.LogFormat)
	}
	if c.Secret != "" && len(c.Secret) < 32 {
		return usagef("MANDATE_SECRET must be at least 32 characters")
	}
	if c.Secret != "" && c.SecretFile != "" {
		return usagef("set MANDATE_SECRET or MANDATE_SECRET_FILE, not both")
	}
	if isPostgres(c.Database) && c.Secret == "" && c.SecretFile == "" {
		return usagef("MANDATE_SECRET is required with a Postgres database (at least 32 characters; or MANDATE_SECRET_FILE)")
	}
	if c.OIDCIssuer != "" {
		u, err := url.Parse(c.OIDCIssuer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return usagef("invalid --oidc-issuer (MANDATE_OIDC_ISSUER) %q: an absolute http(s) URL", c.OIDCIssuer)
		}
		if c.OIDCClientID == "" || c.OIDCClientSecret == "" {
			return usagef("--oidc-issuer needs --oidc-client-id (MANDATE_OIDC_CLIENT_ID) and MANDATE_OIDC_CLIENT_SECRET")
		}
		if c.OIDCTenantClaim == "" {
			return usagef("--oidc-tenant-claim (MANDATE_OIDC_TENANT_CLAIM) is empty")
		}
	}
	if c.BootstrapAdminSecret != "" && len(c.BootstrapAdminSecret) < 32 {
		return usagef("MANDATE_BOOTSTRAP_ADMIN_SECRET must be at least 32 characters")
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usagef("invalid --log-level (MANDATE_LOG_LEVEL) %q: debug, info, warn or error", s)
	}
	return l, nil
}

// newLogger writes text to a terminal and JSON elsewhere, unless format says which; a warning
// or error repeated within repeat is written once, then counted.
func newLogger(w io.Writer, level, format string, repeat time.Duration) *slog.Logger {
	l, _ := parseLevel(level)
	opts := &slog.HandlerOptions{Level: l}
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(server.CollapseRepeats(server.LogHandler(h), repeat))
}
