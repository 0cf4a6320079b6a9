package consent

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// cookieName is the session cookie's name: with https, the __Host- prefix makes browsers
// refuse it unless it is Secure, host-only and for path /.
func (h *Handler) cookieName() string {
	if h.secure {
		return "__Host-mandate_session"
	}
	return "mandate_session"
}

// random returns n random bytes, base64url.
func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}

// sessionID is what the store keys a session by: a hash of the cookie's value.
func sessionID(cookie string) string {
	sum := sha256.Sum256([]byte(cookie))
	return hex.EncodeToString(sum[:])
}

// newSession stores s under a fresh random cookie value and sets the cookie.
func (h *Handler) newSession(w http.ResponseWriter, r *http.Request, s *storage.Session) error {
	value := random(32)
	s.ID = sessionID(value)
	if err := h.store.CreateSession(r.Context(), s); err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{
		Name: h.cookieName(), Value: value, Path: "/", HttpOnly: true, Secure: h.secure,
		// Lax, not Strict: the provider's redirect back to the callback is a cross-site
		// navigation, and it must carry the pre-login session.
		SameSite: http.SameSiteLaxMode,
		Expires:  s.ExpiresAt,
	})
	return nil
}

func (h *Handler) clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: h.cookieName(), Value: "", Path: "/", HttpOnly: true,
		Secure: h.secure, SameSite: http.SameSiteLaxMode, MaxAge: -1})
}

var errNoSession = errors.New("consent: no live session")

// session returns the request's live session: signed in, within its absolute lifetime and
// used within the idle timeout. It marks it used (at most once a minute, to spare writes).
func (h *Handler) session(r *http.Request) (*storage.Session, error) {
	s, err := h.rawSession(r)
	if err != nil {
		return nil, err
	}
	now := h.now()
	if s.Subject == "" || !now.Before(s.ExpiresAt) || !now.Before(s.LastSeenAt.Add(h.idle)) {
		return nil, errNoSession
	}
	if now.Sub(s.LastSeenAt) > time.Minute {
		if err := h.store.TouchSession(r.Context(), s.ID, now); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	}
	return s, nil
}

// rawSession reads the cookie's session as stored, signed in or not.
func (h *Handler) rawSession(r *http.Request) (*storage.Session, error) {
	c, err := r.Cookie(h.cookieName())
	if err != nil || c.Value == "" || len(c.Value) > 128 {
		return nil, errNoSession
	}
	s, err := h.store.GetSession(r.Context(), sessionID(c.Value))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errNoSession
	}
	return s, err
}

func userOf(s *storage.Session) exchange.User { return exchange.User{Sub: s.Subject, Tenant: s.Tenant} }

// checkForm guards a state-changing POST: the session's CSRF token, compared in constant
// time, and a same-origin request where the browser says where it came from. Browsers send
// "Origin: null" on our POSTs (Referrer-Policy: no-referrer), so Sec-Fetch-Site is what
// tells; without either header the token alone decides.
func (h *Handler) checkForm(r *http.Request, s *storage.Session) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" && o != h.origin {
		return false
	}
	token := r.PostFormValue("csrf")
	return token != "" && s.CSRFToken != "" &&
		subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRFToken)) == 1
}

// parsePost reads a small form body.
func parsePost(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	return r.ParseForm()
}
