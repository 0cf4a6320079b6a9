package stack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestConsentInABrowser is SPEC §11 as a person lives it, in a real headless Chromium: an MCP
// tool call is refused for lack of a grant and answers with a link; alice opens it, signs in
// at the IdP, reads and approves; the call succeeds; she finds the grant and its consent
// record on /account and revokes it; the next exchange fails. Then bob, signed in, opens a
// request meant for alice and is refused. Screenshots of each page, at a phone's and a
// desktop's size, go to $MANDATE_TEST_ARTIFACTS (else a temporary directory).
//
// It runs when MANDATE_TEST_CHROMIUM names the browser (CI: /usr/bin/chromium, from Debian's
// chromium package; nothing here downloads a browser) and is skipped otherwise.
func TestConsentInABrowser(t *testing.T) {
	exe := os.Getenv("MANDATE_TEST_CHROMIUM")
	if exe == "" {
		t.Skip("MANDATE_TEST_CHROMIUM is not set: set it to a Chromium binary (apt-get install chromium; /usr/bin/chromium) to run the consent flow in a real browser")
	}
	if _, err := os.Stat(exe); err != nil {
		t.Fatalf("MANDATE_TEST_CHROMIUM=%s: %v", exe, err)
	}
	artifacts := os.Getenv("MANDATE_TEST_ARTIFACTS")
	if artifacts == "" {
		artifacts = t.TempDir()
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RevokeGrant(ctx, "alice", "test: start without a grant"); err != nil {
		t.Fatal(err)
	}
	alice, err := s.ConnectWithElicitation(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	askLink := func() string {
		t.Helper()
		tp, _ := NewTraceparent()
		_, err := Call(ctx, alice, "get_order_status", map[string]any{"order_id": "A-1001"}, tp)
		link, ok := ElicitationURL(err)
		if !ok {
			t.Fatalf("tool call without a grant: %v, want a URL elicitation", err)
		}
		return link
	}
	link := askLink()

	// Chromium's helper processes can still be writing the profile for a moment after the
	// browser has exited, which t.TempDir's cleanup reports as a failure: remove it ourselves,
	// retrying while it is still being written.
	profile, err := os.MkdirTemp("", "mandate-browser-profile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			err := os.RemoveAll(profile)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					t.Logf("browser profile %s left behind: %v", profile, err)
				}
				return
			}
		}
	})
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(exe),
		chromedp.Headless, // --headless
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(profile),
	)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf))
	defer cancelBrowser()

	shot := func(name string) chromedp.Action {
		return chromedp.ActionFunc(func(ctx context.Context) error {
			for _, vp := range []struct {
				suffix string
				w, h   int64
				mobile bool
			}{{"phone", 390, 844, true}, {"desktop", 1280, 900, false}} {
				var png []byte
				opts := []chromedp.EmulateViewportOption{chromedp.EmulateScale(2)}
				if vp.mobile {
					opts = append(opts, chromedp.EmulateMobile)
				}
				if err := chromedp.Run(ctx,
					chromedp.EmulateViewport(vp.w, vp.h, opts...),
					chromedp.Sleep(100*time.Millisecond), // layout after the resize
					chromedp.FullScreenshot(&png, 100),   // 100: PNG (anything less is JPEG),
				); err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(artifacts, name+"-"+vp.suffix+".png"), png, 0o644); err != nil {
					return err
				}
			}
			return chromedp.EmulateViewport(1280, 900).Do(ctx)
		})
	}
	text := func(sel string) string {
		t.Helper()
		var out string
		if err := chromedp.Run(browser, chromedp.WaitVisible(sel, chromedp.ByQuery), chromedp.Text(sel, &out, chromedp.ByQuery)); err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return out
	}
	signIn := func(user string) chromedp.Tasks {
		return chromedp.Tasks{
			chromedp.WaitVisible(`a.button.primary`, chromedp.ByQuery), // "Sign in"
			chromedp.Click(`a.button.primary`, chromedp.ByQuery),
			chromedp.WaitVisible(`#username`, chromedp.ByQuery),
			chromedp.SendKeys(`#username`, user, chromedp.ByQuery),
			chromedp.SendKeys(`#password`, "demo", chromedp.ByQuery),
			chromedp.Click(`#signin`, chromedp.ByQuery),
		}
	}

	// alice opens the link, signs in, and reads what she is asked.
	if err := chromedp.Run(browser,
		chromedp.EmulateViewport(1280, 900),
		chromedp.Navigate(link),
		signIn("alice"),
		chromedp.WaitVisible(`#approve`, chromedp.ByQuery),
		shot("consent"),
	); err != nil {
		t.Fatalf("alice signing in to the consent page: %v", err)
	}
	consentText := text(`dl.consent`)
	for _, want := range []string{"Demo MCP server (demo-mcp)", "support-agent", "alice in acme", "Orders API (orders_api)",
		"orders:read", "on your behalf", "7 days from approval", "Look up the status of your orders"} {
		if !strings.Contains(strings.ToLower(consentText), strings.ToLower(want)) {
			t.Errorf("the consent page does not show %q:\n%s", want, consentText)
		}
	}
	if who := text(`.who`); !strings.Contains(who, "Alice Adams") {
		t.Errorf("the page does not say who is signed in: %q", who)
	}

	// She approves; the tool call succeeds at once.
	if err := chromedp.Run(browser, chromedp.Click(`#approve`, chromedp.ByQuery),
		chromedp.WaitNotPresent(`#approve`, chromedp.ByQuery), // the answer page has loaded
		chromedp.WaitVisible(`ul.links`, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if h := text(`main h1`); h != "Approved" {
		t.Fatalf("after Approve the page says %q", h)
	}
	tp, trace := NewTraceparent()
	res, err := Call(ctx, alice, "get_order_status", map[string]any{"order_id": "A-1001"}, tp)
	if err != nil || res.IsError || !strings.Contains(res.Text, `"status":"shipped"`) {
		t.Fatalf("tool call after approval: %v %+v", err, res)
	}
	grantID := findExchange(t, s, trace).GrantID

	// /account lists the grant with its consent record; she revokes it.
	card := fmt.Sprintf(`#grant-%s`, grantID)
	if err := chromedp.Run(browser,
		chromedp.Navigate(s.Mandate.Issuer+"/account"),
		chromedp.WaitVisible(card, chromedp.ByQuery),
		chromedp.Click(card+` details.record summary`, chromedp.ByQuery),
		shot("account"),
	); err != nil {
		t.Fatalf("account page: %v", err)
	}
	cardText := text(card)
	for _, want := range []string{"Demo MCP server (demo-mcp)", "active", "Created by", "you", "approved by user:alice",
		"Orders API (orders_api)", "Look up the status of your orders"} {
		if !strings.Contains(strings.ToLower(cardText), strings.ToLower(want)) { // CSS capitalises some labels
			t.Errorf("the account page's grant does not show %q:\n%s", want, cardText)
		}
	}
	if err := chromedp.Run(browser,
		chromedp.Click(card+` button.danger`, chromedp.ByQuery),
		chromedp.WaitVisible(`p.notice`, chromedp.ByQuery),
	); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if st := text(card + ` .status`); !strings.EqualFold(st, "revoked") {
		t.Errorf("after Revoke the grant's status reads %q", st)
	}
	// The cached token is refused by the orders API (introspection), the re-exchange by
	// Mandate: the tool asks again.
	tp, trace = NewTraceparent()
	_, err = Call(ctx, alice, "get_order_status", map[string]any{"order_id": "A-1001"}, tp)
	if _, ok := ElicitationURL(err); !ok {
		t.Fatalf("tool call after revocation: %v, want a new URL elicitation", err)
	}
	if r := findExchange(t, s, trace); r.Outcome != "denied" || r.Reason != "no_active_grant" {
		t.Fatalf("exchange after revocation = %+v, want denied no_active_grant", r)
	}

	// bob signs in and opens a request meant for alice: refused.
	link = askLink()
	if err := chromedp.Run(browser,
		chromedp.Click(`.who button`, chromedp.ByQuery), // Sign out
		chromedp.WaitNotPresent(`.who`, chromedp.ByQuery),
		chromedp.Navigate(link),
		signIn("bob"),
		chromedp.WaitVisible(`main h1`, chromedp.ByQuery),
		shot("consent-wrong-user"),
	); err != nil {
		t.Fatalf("bob: %v", err)
	}
	if h := text(`main h1`); h != "Not your request" {
		t.Fatalf("bob opening alice's request sees %q", h)
	}
	for _, name := range []string{"consent", "account", "consent-wrong-user"} {
		for _, vp := range []string{"phone", "desktop"} {
			if st, err := os.Stat(filepath.Join(artifacts, name+"-"+vp+".png")); err != nil || st.Size() < 1000 {
				t.Errorf("screenshot %s-%s: %v", name, vp, err)
			}
		}
	}
	t.Logf("screenshots in %s", artifacts)
}
