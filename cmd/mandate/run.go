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

// run is the whole program. It returns when the command is done or ctx is cancelled;
// SIGINT and SIGTERM cancel it too.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cmd := "serve"
	switch {
	case len(args) > 0 && isHelp(args[0]):
		// "mandate --help" is about mandate, not about serve; "mandate help X" is X's help.
		if len(args) > 1 {
			cmd, args = args[1], []string{"--help"}
		} else {
			cmd, args = "help", nil
		}
	case len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-':
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
	case "flood":
		return runFlood(ctx, args, getenv, stdout, stderr)
	case "envelope":
		return runEnvelope(ctx, args, getenv, stdout)
	case "version":
		if len(args) > 0 && isHelp(args[0]) {
			titleLine(stdout, "mandate version", summaryOf("version"))
			return nil
		}
		fmt.Fprintln(stdout, "mandate", version)
		return nil
	case "help":
		printUsage(stdout)
		return nil
	case "explain":
		return runExplain(ctx, args, getenv, stdout, stderr)
	case "clients", "audiences", "grants", "grant-requests", "keys", "audit":
		return runAdmin(ctx, append([]string{cmd}, args...), getenv, stdout, stderr)
	default:
		printUsage(stderr)
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
