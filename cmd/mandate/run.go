package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// usageError is bad input from the operator (a flag, a variable, a subcommand): main exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

const usage = `Usage: mandate [command] [flags]

Commands:
  serve       run the server (the default)
  migrate     up | status | down: manage the database schema
  version     print the version
  envelope    keygen | mint: act as an MCP server from a shell (development)
  clients, audiences, grants, keys, audit
              manage Mandate over its admin API ("mandate clients -h")
  explain     would an exchange be granted, and why? ("mandate explain -h")
  bench       provision, load and measure a running Mandate's token exchange
  healthcheck probe /readyz (for container health checks)

Run "mandate serve -h" for the server's flags; every flag has a MANDATE_* variable.
`

// run is the whole program. It returns when the command is done or ctx is cancelled;
// SIGINT and SIGTERM cancel it too.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	err := dispatch(ctx, cmd, args, getenv, stdout, stderr)
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

func dispatch(ctx context.Context, cmd string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	switch cmd {
	case "serve":
		return runServe(ctx, args, getenv, stdout, stderr)
	case "migrate":
		return runMigrate(ctx, args, getenv, stdout)
	case "healthcheck":
		return runHealthcheck(ctx, args, stdout)
	case "bench":
		return runBench(ctx, args, getenv, stdout, stderr)
	case "envelope":
		return runEnvelope(ctx, args, getenv, stdout)
	case "version":
		fmt.Fprintln(stdout, "mandate", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "explain":
		return runExplain(ctx, args, getenv, stdout, stderr)
	case "clients", "audiences", "grants", "keys", "audit":
		return runAdmin(ctx, append([]string{cmd}, args...), getenv, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return usagef("unknown command %q", cmd)
	}
}

// parseFlags parses fs and turns flag's own errors into usage errors (exit 2).
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return errHelp
	}
	if err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// errHelp ends a command that printed its help: not a failure.
var errHelp = errors.New("help requested")
