package consent

import "net/http"

// routes lists every page of the package; each answer goes through secure.
func (h *Handler) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET "+PathStyle, handleStyle())
	mux.Handle("GET "+PathConsent, secure(h.handlePending()))
	mux.Handle("GET "+PathConsent+"/{id}", secure(h.handleRequest()))
	mux.Handle("POST "+PathConsent+"/{id}", secure(h.handleDecide()))
	mux.Handle("GET "+PathLogin, secure(h.handleLogin()))
	mux.Handle("GET "+PathCallback, secure(h.handleCallback()))
	mux.Handle("POST "+PathLogout, secure(h.handleLogout()))
	mux.Handle("GET "+PathAccount, secure(h.handleAccount()))
	mux.Handle("POST "+PathAccount+"/grants/{id}/revoke", secure(h.handleRevoke()))
	return mux
}

// secure sets the headers every page carries: no script at all, no framing, no referrer
// (links on the pages must not carry request ids elsewhere), nothing cached.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; "+
			"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		hd.Set("Pragma", "no-cache")
		next.ServeHTTP(w, r)
	})
}

func handleStyle() http.Handler {
	css, err := files.ReadFile("templates/style.css")
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(css)
	})
}
