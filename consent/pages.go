package consent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// Audit events of this package (SPEC §8's consent.*).
const (
	EventSignIn      = "consent.sign_in"
	EventPageRefusal = "consent.refused"
)

// Reason codes of this package's refusals.
const (
	ReasonCSRF          = "csrf_check_failed"
	ReasonSignInFailed  = "sign_in_failed"
	ReasonNoTenantClaim = "sign_in_without_tenant"
	ReasonSignedIn      = "signed_in"
)

// page is what every template gets.
type page struct {
	Title    string
	Status   int
	User     *storage.Session
	CSRF     string
	Message  string
	Detail   string
	LoginURL string
	Links    []link

	View     *exchange.ConsentView
	Digest   string
	Requests []pendingItem
	Grants   []grantItem
	Everyone []grantItem
}

type link struct{ Href, Text string }

type pendingItem struct {
	ID, Title, Expires string
}

type grantItem struct {
	ID, Client, Agent, Services, Scopes, Modes, Status, Expires, CreatedBy string
	Active                                                                 bool
	Consent                                                                *storage.ConsentRecord
	ConsentAt                                                              string
}

func parsePages() map[string]*template.Template {
	funcs := template.FuncMap{}
	layout := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html"))
	pages := map[string]*template.Template{}
	for _, name := range []string{"message", "request", "pending", "account"} {
		t := template.Must(layout.Clone())
		pages[name] = template.Must(t.ParseFS(files, "templates/"+name+".html"))
	}
	return pages
}

// render writes a page; a template failure is a 500 with a plain message (and a log line).
func (h *Handler) render(w http.ResponseWriter, r *http.Request, name string, p *page) {
	if p.Status == 0 {
		p.Status = http.StatusOK
	}
	var buf bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&buf, "layout.html", p); err != nil {
		h.log.ErrorContext(r.Context(), "consent: rendering a page failed", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(p.Status)
	_, _ = w.Write(buf.Bytes())
}

func (h *Handler) message(w http.ResponseWriter, r *http.Request, status int, title, msg string, s *storage.Session, links ...link) {
	p := &page{Title: title, Status: status, Message: msg, User: s, Links: links}
	if s != nil {
		p.CSRF = s.CSRFToken
	}
	h.render(w, r, "message", p)
}

func (h *Handler) fault(w http.ResponseWriter, r *http.Request, err error) {
	h.log.ErrorContext(r.Context(), "consent: storage or provider failure", "path", r.URL.Path, "err", err)
	h.message(w, r, http.StatusServiceUnavailable, "Temporarily unavailable",
		"Something Mandate depends on did not answer. Try again in a moment.", nil)
}

// notConfigured is every page's answer when no sign-in provider is configured.
func (h *Handler) notConfigured(w http.ResponseWriter, r *http.Request, requestID string) {
	msg := "This Mandate has no sign-in provider configured, so you cannot approve requests here."
	if requestID != "" {
		msg += " An administrator can approve request " + requestID + " for you through the admin API."
	}
	h.message(w, r, http.StatusServiceUnavailable, "Sign-in is not configured", msg, nil)
}

// signInFirst asks the visitor to sign in, coming back to the page they asked for.
func (h *Handler) signInFirst(w http.ResponseWriter, r *http.Request, status int) {
	h.render(w, r, "message", &page{
		Title: "Sign in", Status: status,
		Message:  "Sign in with your organisation's account to continue.",
		LoginURL: PathLogin + "?next=" + url.QueryEscape(r.URL.Path),
	})
}

// live is the signed-in session, or an answer already written (false).
func (h *Handler) live(w http.ResponseWriter, r *http.Request, requestID string) (*storage.Session, bool) {
	if h.oidc == nil {
		h.notConfigured(w, r, requestID)
		return nil, false
	}
	s, err := h.session(r)
	switch {
	case errors.Is(err, errNoSession):
		status := http.StatusOK
		if r.Method == http.MethodPost {
			status = http.StatusUnauthorized
		}
		h.signInFirst(w, r, status)
		return nil, false
	case err != nil:
		h.fault(w, r, err)
		return nil, false
	}
	return s, true
}

// handlePending is /consent, the verification_uri: the signed-in user's pending requests.
func (h *Handler) handlePending() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.live(w, r, "")
		if !ok {
			return
		}
		now := h.now()
		items, _, err := h.store.ListGrantRequests(r.Context(), storage.GrantRequestFilter{
			Tenant: s.Tenant, Subject: s.Subject, Status: storage.GrantRequestPending, Now: now,
			Page: storage.Page{Limit: 50},
		})
		if err != nil {
			h.fault(w, r, err)
			return
		}
		p := &page{Title: "Requests waiting for you", User: s, CSRF: s.CSRFToken}
		for i := range items {
			view, err := h.exchange.Describe(r.Context(), &items[i])
			if err != nil {
				continue // a request whose client or audience is gone cannot be approved
			}
			p.Requests = append(p.Requests, pendingItem{ID: items[i].ID, Title: view.Title,
				Expires: "expires in " + untilText(items[i].ExpiresAt.Sub(now))})
		}
		h.render(w, r, "pending", p)
	})
}

// handleRequest is the consent page of one request.
func (h *Handler) handleRequest() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		s, ok := h.live(w, r, id)
		if !ok {
			return
		}
		h.showRequest(w, r, s, id, "")
	})
}

// showRequest renders request id for s, or says why it cannot be decided; note is a line
// shown above the request (after a refused attempt).
func (h *Handler) showRequest(w http.ResponseWriter, r *http.Request, s *storage.Session, id, note string) {
	ctx := r.Context()
	gr, err := h.store.GetGrantRequest(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		h.message(w, r, http.StatusNotFound, "No such request", "There is no grant request at this address. Check the link you were given.", s)
		return
	} else if err != nil {
		h.fault(w, r, err)
		return
	}
	if gr.Tenant != s.Tenant || gr.Subject != s.Subject {
		reason := exchange.ReasonConsentWrongUser
		if gr.Tenant != s.Tenant {
			reason = exchange.ReasonConsentWrongTenant
		}
		h.auditRefusal(ctx, r, s, gr, reason)
		h.message(w, r, http.StatusForbidden, "Not your request",
			"This request is for another person. You are signed in as "+s.Subject+" ("+s.Tenant+"); sign out and sign in as the person it names.", s)
		return
	}
	switch gr.Status(h.now()) {
	case storage.GrantRequestApproved:
		h.message(w, r, http.StatusConflict, "Already approved", "This request was already approved.", s, link{PathAccount, "See your grants"})
		return
	case storage.GrantRequestDenied:
		h.message(w, r, http.StatusConflict, "Already denied", "This request was already denied.", s)
		return
	case storage.GrantRequestExpired:
		h.message(w, r, http.StatusGone, "Request expired", "This request has expired. Ask the application to send a new one.", s)
		return
	}
	view, err := h.exchange.Describe(ctx, gr)
	if err != nil {
		if e := exchange.AsError(err); e != nil && e.Reason == exchange.ReasonGrantRequestChanged {
			h.message(w, r, http.StatusConflict, "Request no longer valid", e.Description, s)
			return
		}
		h.fault(w, r, err)
		return
	}
	h.render(w, r, "request", &page{Title: view.Title, User: s, CSRF: s.CSRFToken, View: view,
		Digest: digest(view.Text()), Message: note})
}

// digest names the consent text a form was rendered with.
func digest(text string) string {
	sum := sha256.Sum256([]byte(text))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// handleDecide is the Approve / Deny form's target.
func (h *Handler) handleDecide() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		s, ok := h.live(w, r, id)
		if !ok {
			return
		}
		if err := parsePost(w, r); err != nil {
			h.message(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.", s)
			return
		}
		ctx := r.Context()
		if !h.checkForm(r, s) {
			h.auditRefusal(ctx, r, s, &storage.GrantRequest{ID: id}, ReasonCSRF)
			h.message(w, r, http.StatusForbidden, "Request refused",
				"This form did not come from this page. Open the request again and use its buttons.", s,
				link{PathConsent + "/" + url.PathEscape(id), "Open the request"})
			return
		}
		action := r.PostFormValue("action")
		if action != "approve" && action != "deny" {
			h.message(w, r, http.StatusBadRequest, "Bad request", "Choose Approve or Deny.", s)
			return
		}
		d := exchange.Decision{RequestID: id, Approve: action == "approve", User: ptr(userOf(s)),
			RemoteAddr: remoteAddr(r)}
		if d.Approve {
			// The approval is of the text the page showed: if the request reads differently
			// now (an admin renamed a service, say), show it again instead.
			gr, err := h.store.GetGrantRequest(ctx, id)
			if err == nil && gr.Tenant == s.Tenant && gr.Subject == s.Subject {
				if view, err := h.exchange.Describe(ctx, gr); err == nil {
					text := view.Text()
					if subtle.ConstantTimeCompare([]byte(digest(text)), []byte(r.PostFormValue("text"))) != 1 {
						h.showRequest(w, r, s, id, "This request changed since it was shown to you. Review it again.")
						return
					}
					d.ShownText = text
				}
			}
		}
		_, grant, err := h.exchange.Decide(ctx, d)
		if err != nil {
			h.decisionRefused(w, r, s, err)
			return
		}
		if grant != nil {
			h.message(w, r, http.StatusOK, "Approved",
				"The application can now act for you as you approved, until "+grant.ExpiresAt.UTC().Format("2 January 2006 15:04 MST")+". You can revoke this at any time.",
				s, link{PathAccount, "See and revoke your grants"})
			return
		}
		h.message(w, r, http.StatusOK, "Denied", "You denied the request. The application cannot act for you with it.", s,
			link{PathAccount, "See your grants"})
	})
}

func (h *Handler) decisionRefused(w http.ResponseWriter, r *http.Request, s *storage.Session, err error) {
	e := exchange.AsError(err)
	if e == nil || e.Code == exchange.CodeServerError || e.Code == exchange.CodeTemporarilyUnavailable {
		h.fault(w, r, err)
		return
	}
	status := http.StatusConflict
	title := "Request not decided"
	switch e.Reason {
	case exchange.ReasonGrantRequestNotFound:
		status, title = http.StatusNotFound, "No such request"
	case exchange.ReasonConsentWrongUser, exchange.ReasonConsentWrongTenant:
		status, title = http.StatusForbidden, "Not your request"
	case exchange.ReasonGrantRequestExpired:
		status, title = http.StatusGone, "Request expired"
	case exchange.ReasonGrantRequestDecided:
		title = "Already decided"
	}
	h.message(w, r, status, title, capitalize(e.Description)+".", s)
}

// handleAccount lists the grants naming the signed-in user in their tenant.
func (h *Handler) handleAccount() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.live(w, r, "")
		if !ok {
			return
		}
		ctx := r.Context()
		now := h.now()
		mine, _, err := h.store.ListGrants(ctx, storage.GrantFilter{Tenant: s.Tenant, Subject: s.Subject, Page: storage.Page{Limit: storage.MaxPageLimit}})
		if err != nil {
			h.fault(w, r, err)
			return
		}
		everyone, _, err := h.store.ListGrants(ctx, storage.GrantFilter{Tenant: s.Tenant, Subject: storage.AnySubject,
			Status: storage.GrantActive, Now: now, Page: storage.Page{Limit: 100}})
		if err != nil {
			h.fault(w, r, err)
			return
		}
		var ids []string
		for _, g := range mine {
			ids = append(ids, g.ID)
		}
		consents, err := h.store.GetConsents(ctx, ids)
		if err != nil {
			h.fault(w, r, err)
			return
		}
		byGrant := map[string]*storage.ConsentRecord{}
		for i := range consents {
			byGrant[consents[i].GrantID] = &consents[i]
		}
		p := &page{Title: "Your grants", User: s, CSRF: s.CSRFToken, Message: r.URL.Query().Get("done")}
		if p.Message != "" && p.Message != "revoked" {
			p.Message = ""
		}
		// Active grants first, newest first within each status.
		slices.SortStableFunc(mine, func(a, b storage.Grant) int {
			ra, rb := a.Status(now) != storage.GrantActive, b.Status(now) != storage.GrantActive
			switch {
			case ra != rb && !ra:
				return -1
			case ra != rb:
				return 1
			}
			return strings.Compare(b.ID, a.ID)
		})
		for i := range mine {
			p.Grants = append(p.Grants, h.grantItem(ctx, &mine[i], byGrant[mine[i].ID], s, now))
		}
		for i := range everyone {
			p.Everyone = append(p.Everyone, h.grantItem(ctx, &everyone[i], nil, s, now))
		}
		h.render(w, r, "account", p)
	})
}

func (h *Handler) grantItem(ctx context.Context, g *storage.Grant, c *storage.ConsentRecord, s *storage.Session, now time.Time) grantItem {
	it := grantItem{ID: g.ID, Client: g.ClientID, Agent: "any agent", Scopes: strings.Join(g.Scopes, ", "),
		Status: g.Status(now), Active: g.Status(now) == storage.GrantActive && g.Subject == s.Subject,
		Expires: g.ExpiresAt.UTC().Format("2 Jan 2006 15:04 MST"), Consent: c}
	if cl, err := h.exchange.Catalog().Client(ctx, g.ClientID); err == nil && cl.Name != "" {
		it.Client = cl.Name + " (" + g.ClientID + ")"
	}
	if g.AgentID != "" {
		it.Agent = g.AgentID
	}
	var svcs, modes []string
	for _, id := range g.Audiences {
		if a, err := h.exchange.Catalog().Audience(ctx, id); err == nil && a.Name != "" {
			svcs = append(svcs, a.Name+" ("+id+")")
		} else {
			svcs = append(svcs, id)
		}
	}
	for _, m := range g.Modes {
		modes = append(modes, exchange.ModeText(m))
	}
	it.Services, it.Modes = strings.Join(svcs, ", "), strings.Join(modes, "; ")
	switch {
	case g.CreatedBy == "user:"+s.Subject:
		it.CreatedBy = "you"
	case strings.HasPrefix(g.CreatedBy, "admin:"):
		it.CreatedBy = "an administrator (" + strings.TrimPrefix(g.CreatedBy, "admin:") + ")"
	case strings.HasPrefix(g.CreatedBy, "user:"):
		it.CreatedBy = "user " + strings.TrimPrefix(g.CreatedBy, "user:")
	default:
		it.CreatedBy = "an administrator (" + g.CreatedBy + ")"
	}
	if c != nil {
		it.ConsentAt = c.ApprovedAt.UTC().Format("2 Jan 2006 15:04 MST")
	}
	return it
}

// handleRevoke revokes one of the signed-in user's grants, then shows the account page again
// (POST, redirect, GET: a reload does not resend the form).
func (h *Handler) handleRevoke() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.live(w, r, "")
		if !ok {
			return
		}
		if err := parsePost(w, r); err != nil {
			h.message(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.", s)
			return
		}
		id := r.PathValue("id")
		if !h.checkForm(r, s) {
			h.auditRefusal(r.Context(), r, s, &storage.GrantRequest{GrantID: id}, ReasonCSRF)
			h.message(w, r, http.StatusForbidden, "Request refused",
				"This form did not come from this page. Open your grants again and use their buttons.", s, link{PathAccount, "Your grants"})
			return
		}
		if _, err := h.exchange.RevokeAsUser(r.Context(), userOf(s), id, remoteAddr(r)); err != nil {
			e := exchange.AsError(err)
			switch {
			case e != nil && e.Reason == exchange.ReasonGrantAlreadyRevoked:
			case e != nil && e.Reason == exchange.ReasonGrantNotYours:
				h.message(w, r, http.StatusNotFound, "No such grant", "You have no grant with this id.", s, link{PathAccount, "Your grants"})
				return
			default:
				h.fault(w, r, err)
				return
			}
		}
		http.Redirect(w, r, PathAccount+"?done=revoked", http.StatusSeeOther)
	})
}

// handleLogin starts the sign-in: a pre-login session holds state, nonce and the PKCE
// verifier, and the browser goes to the provider.
func (h *Handler) handleLogin() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.oidc == nil {
			h.notConfigured(w, r, "")
			return
		}
		next := localPath(r.URL.Query().Get("next"))
		if _, err := h.session(r); err == nil {
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		_, cfg, err := h.providerFor(r.Context())
		if err != nil {
			h.fault(w, r, err)
			return
		}
		now := h.now()
		s := &storage.Session{LoginState: random(24), LoginNonce: random(24), LoginVerifier: oauth2.GenerateVerifier(),
			ReturnTo: next, CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(loginLifetime)}
		if err := h.newSession(w, r, s); err != nil {
			h.fault(w, r, err)
			return
		}
		http.Redirect(w, r, cfg.AuthCodeURL(s.LoginState, oidc.Nonce(s.LoginNonce), oauth2.S256ChallengeOption(s.LoginVerifier)), http.StatusFound)
	})
}

// handleCallback completes the sign-in: state and nonce must match the pre-login session,
// the code is redeemed with its PKCE verifier, the ID token verified, and a new session
// (a new id: the pre-login one is dropped) holds the user.
func (h *Handler) handleCallback() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.oidc == nil {
			h.notConfigured(w, r, "")
			return
		}
		ctx := r.Context()
		pre, err := h.rawSession(r)
		if err != nil || pre.Subject != "" || pre.LoginState == "" || !h.now().Before(pre.ExpiresAt) {
			h.signInFailed(w, r, "", "The sign-in took too long or was started elsewhere. Start again.", errors.New("no pre-login session"))
			return
		}
		// The pre-login session is used once, whatever happens next.
		_ = h.store.DeleteSession(ctx, pre.ID)
		h.clearCookie(w)
		q := r.URL.Query()
		if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(pre.LoginState)) != 1 {
			h.signInFailed(w, r, "", "The sign-in answer does not belong to this browser. Start again.", errors.New("state mismatch"))
			return
		}
		if e := q.Get("error"); e != "" {
			h.signInFailed(w, r, "", "Your organisation's sign-in did not complete ("+clipText(e, 64)+").", errors.New("provider error "+e))
			return
		}
		prov, cfg, err := h.providerFor(ctx)
		if err != nil {
			h.fault(w, r, err)
			return
		}
		octx := oidc.ClientContext(ctx, h.oidc.HTTPClient)
		tok, err := cfg.Exchange(octx, q.Get("code"), oauth2.VerifierOption(pre.LoginVerifier))
		if err != nil {
			h.signInFailed(w, r, "", "Your organisation's sign-in could not be completed. Start again.", err)
			return
		}
		raw, _ := tok.Extra("id_token").(string)
		idt, err := prov.Verifier(&oidc.Config{ClientID: h.oidc.ClientID, Now: h.now}).Verify(octx, raw)
		if err != nil {
			h.signInFailed(w, r, "", "Your organisation's sign-in answer could not be verified.", err)
			return
		}
		if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(pre.LoginNonce)) != 1 {
			h.signInFailed(w, r, idt.Subject, "The sign-in answer does not belong to this sign-in. Start again.", errors.New("nonce mismatch"))
			return
		}
		var claims map[string]any
		if err := idt.Claims(&claims); err != nil {
			h.signInFailed(w, r, idt.Subject, "Your organisation's sign-in answer could not be read.", err)
			return
		}
		tenant, _ := claims[h.oidc.TenantClaim].(string)
		if tenant == "" || idt.Subject == "" {
			h.auditSignIn(ctx, r, idt.Subject, "", storage.OutcomeDenied, ReasonNoTenantClaim)
			h.message(w, r, http.StatusForbidden, "Sign-in incomplete",
				"Your organisation's sign-in did not say which organisation you belong to (claim "+h.oidc.TenantClaim+"). Ask your administrator.", nil)
			return
		}
		name, _ := claims["name"].(string)
		if name == "" {
			name, _ = claims["preferred_username"].(string)
		}
		now := h.now()
		s := &storage.Session{Subject: idt.Subject, Tenant: tenant, Name: clipText(name, 128), CSRFToken: random(32),
			CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(h.lifetime)}
		if err := h.newSession(w, r, s); err != nil {
			h.fault(w, r, err)
			return
		}
		h.auditSignIn(ctx, r, s.Subject, s.Tenant, storage.OutcomeGranted, ReasonSignedIn)
		http.Redirect(w, r, localPath(pre.ReturnTo), http.StatusSeeOther)
	})
}

func (h *Handler) signInFailed(w http.ResponseWriter, r *http.Request, sub, msg string, cause error) {
	h.log.InfoContext(r.Context(), "consent: sign-in failed", "err", cause)
	h.auditSignIn(r.Context(), r, sub, "", storage.OutcomeDenied, ReasonSignInFailed)
	h.render(w, r, "message", &page{Title: "Sign-in failed", Status: http.StatusBadRequest, Message: msg,
		LoginURL: PathLogin + "?next=" + url.QueryEscape(PathConsent)})
}

// handleLogout ends the session.
func (h *Handler) handleLogout() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := h.session(r)
		if err == nil {
			if perr := parsePost(w, r); perr != nil || !h.checkForm(r, s) {
				h.message(w, r, http.StatusForbidden, "Request refused", "This form did not come from this page.", s)
				return
			}
			if err := h.store.DeleteSession(r.Context(), s.ID); err != nil && !errors.Is(err, storage.ErrNotFound) {
				h.fault(w, r, err)
				return
			}
		}
		h.clearCookie(w)
		h.message(w, r, http.StatusOK, "Signed out", "You are signed out.", nil)
	})
}

// auditRefusal records a page refusal against gr (what is known of it).
func (h *Handler) auditRefusal(ctx context.Context, r *http.Request, s *storage.Session, gr *storage.GrantRequest, reason string) {
	rec := &storage.AuditRecord{ID: storage.NewID("evt"), Time: h.now(), Event: EventPageRefusal,
		Outcome: storage.OutcomeDenied, Reason: reason, ClientID: gr.ClientID, ActorSub: s.Subject,
		Tenant: s.Tenant, GrantID: clipText(gr.GrantID, 256), RemoteAddr: remoteAddr(r),
		Detail: []byte(`{"request_id":` + jsonString(clipText(gr.ID, 256)) + `,"path":` + jsonString(clipText(r.URL.Path, 512)) + `}`)}
	if err := h.store.AppendAudit(ctx, rec); err != nil {
		h.log.ErrorContext(ctx, "consent: audit write failed", "reason", reason, "err", err)
	}
}

func (h *Handler) auditSignIn(ctx context.Context, r *http.Request, sub, tenant, outcome, reason string) {
	rec := &storage.AuditRecord{ID: storage.NewID("evt"), Time: h.now(), Event: EventSignIn, Outcome: outcome,
		Reason: reason, ActorSub: clipText(sub, 256), Tenant: clipText(tenant, 256), RemoteAddr: remoteAddr(r)}
	if err := h.store.AppendAudit(ctx, rec); err != nil {
		h.log.ErrorContext(ctx, "consent: audit write failed", "reason", reason, "err", err)
	}
}

// localPath keeps a return path on this site's own pages; anything else goes to /consent.
func localPath(p string) string {
	if (p == PathConsent || strings.HasPrefix(p, PathConsent+"/") || p == PathAccount) &&
		!strings.ContainsAny(p, "\\?#") && !strings.Contains(p, "//") && len(p) <= 256 {
		return p
	}
	return PathConsent
}

func remoteAddr(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

func untilText(d time.Duration) string {
	if d < time.Minute {
		return "less than a minute"
	}
	return exchange.DurationText(d.Truncate(time.Minute))
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func clipText(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			continue
		}
		if b.Len()+len(string(r)) > n {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

func jsonString(s string) string { return string(exchange.AppendJSONString(nil, s)) }

func ptr[T any](v T) *T { return &v }
