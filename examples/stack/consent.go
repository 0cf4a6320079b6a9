package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandatehq/mandate/examples/idp"
)

// ElicitationURL returns the link of a URL-mode elicitation a tool call answered with
// (JSON-RPC error -32042, what boundary.Delegator.AskUser returns), if err is one.
func ElicitationURL(err error) (string, bool) {
	var rpc *jsonrpc.Error
	if !errors.As(err, &rpc) || rpc.Code != mcp.CodeURLElicitationRequired {
		return "", false
	}
	var data struct {
		Elicitations []mcp.ElicitParams `json:"elicitations"`
	}
	if json.Unmarshal(rpc.Data, &data) != nil || len(data.Elicitations) == 0 || data.Elicitations[0].URL == "" {
		return "", false
	}
	return data.Elicitations[0].URL, true
}

// Browser is a cookie-keeping HTTP client that walks the consent pages as a person's browser
// would, without JavaScript (the pages need none): for the demo's headless approval.
type Browser struct {
	c *http.Client
}

// NewBrowser returns a Browser with an empty cookie jar.
func NewBrowser() *Browser {
	jar, _ := cookiejar.New(nil)
	return &Browser{c: &http.Client{Jar: jar}}
}

var (
	hiddenInput = regexp.MustCompile(`<input type="hidden" name="([a-z_]+)" value="([^"]*)">`)
	formAction  = regexp.MustCompile(`<form method="post" action="([^"]+)"`)
)

// Get fetches u and returns the final URL (after redirects), the status and the page.
func (b *Browser) Get(ctx context.Context, u string) (string, int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", 0, "", err
	}
	return b.do(req)
}

// Post sends form to u and returns the final URL, the status and the page.
func (b *Browser) Post(ctx context.Context, u string, form url.Values) (string, int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

func (b *Browser) do(req *http.Request) (string, int, string, error) {
	resp, err := b.c.Do(req)
	if err != nil {
		return "", 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.Request.URL.String(), resp.StatusCode, string(body), err
}

// SignIn follows the consent page's sign-in link to the demo IdP and logs in as user; it
// returns the page Mandate shows afterwards.
func (b *Browser) SignIn(ctx context.Context, page, user string) (string, string, error) {
	at, _, body, err := b.Get(ctx, page)
	if err != nil {
		return "", "", err
	}
	if !strings.Contains(body, `href="/consent/login?next=`) {
		return at, body, nil // already signed in
	}
	base, _ := url.Parse(at)
	i := strings.Index(body, `href="/consent/login?next=`)
	href := body[i+len(`href="`):]
	href = strings.ReplaceAll(href[:strings.IndexByte(href, '"')], "&amp;", "&")
	loginURL := base.ResolveReference(&url.URL{Path: "/consent/login"})
	loginURL.RawQuery = strings.TrimPrefix(href, "/consent/login?")
	formAt, status, form, err := b.Get(ctx, loginURL.String())
	if err != nil {
		return "", "", err
	}
	if status != http.StatusOK || !strings.Contains(form, `name="password"`) {
		return "", "", fmt.Errorf("the sign-in did not reach the IdP's login form (HTTP %d at %s)", status, formAt)
	}
	values := url.Values{"username": {user}, "password": {idp.Password}}
	for _, m := range hiddenInput.FindAllStringSubmatch(form, -1) {
		values.Set(m[1], htmlUnescape(m[2]))
	}
	idpURL, _ := url.Parse(formAt)
	at, status, body, err = b.Post(ctx, idpURL.ResolveReference(&url.URL{Path: "/authorize"}).String(), values)
	if err != nil {
		return "", "", err
	}
	if status != http.StatusOK {
		return "", "", fmt.Errorf("after sign-in: HTTP %d at %s", status, at)
	}
	return at, body, nil
}

// Decide signs in as user if needed, opens the consent page at link and presses Approve (or
// Deny); it returns the page Mandate answers with.
func (b *Browser) Decide(ctx context.Context, link, user string, approve bool) (int, string, error) {
	at, body, err := b.SignIn(ctx, link, user)
	if err != nil {
		return 0, "", err
	}
	action := formAction.FindAllStringSubmatch(body, -1)
	values := url.Values{}
	for _, m := range hiddenInput.FindAllStringSubmatch(body, -1) {
		values.Set(m[1], htmlUnescape(m[2]))
	}
	target := ""
	for _, a := range action {
		if strings.HasPrefix(a[1], "/consent/") && a[1] != "/consent/logout" {
			target = a[1]
		}
	}
	if target == "" || values.Get("text") == "" {
		return 0, "", fmt.Errorf("no Approve/Deny form on %s", at)
	}
	values.Set("action", "deny")
	if approve {
		values.Set("action", "approve")
	}
	base, _ := url.Parse(at)
	_, status, page, err := b.Post(ctx, base.ResolveReference(&url.URL{Path: target}).String(), values)
	return status, page, err
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&amp;", "&", "&#43;", "+", "&#34;", `"`, "&#39;", "'", "&lt;", "<", "&gt;", ">").Replace(s)
}
