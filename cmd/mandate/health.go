package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// runHealthcheck probes a URL and fails unless it answers 200: the container health check,
// since the distroless image has no curl.
func runHealthcheck(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	u := fs.String("url", "http://127.0.0.1:8080/readyz", "URL to probe")
	fs.Usage = func() {
		titleLine(stdout, "mandate healthcheck [flags]", "Exits 0 when --url answers 200, 1 otherwise (the distroless image has no curl).")
		printFlags(stdout, fs, func(string) string { return "" }, nil)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *u, nil)
	if err != nil {
		return usagef("healthcheck: bad --url: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s", *u, resp.Status)
	}
	return nil
}
