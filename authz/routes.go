package authz

import (
	"net/http"
	"strings"
)

// routes lists every endpoint of the public listener.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("POST "+PathToken, s.handleToken())
	mux.Handle("POST "+PathIntrospect, s.handleIntrospect())
	mux.Handle("POST "+PathRevoke, s.handleRevoke())
	mux.Handle("GET "+PathASMetadata, s.handleMetadata())
	mux.Handle("GET "+PathOIDCMetadata, s.handleMetadata())
	mux.Handle("GET "+PathJWKS, s.handleJWKS())
	mux.Handle("POST "+PathGrantRequests, s.handleCreateGrantRequest())
	mux.Handle("GET "+PathGrantRequests+"/{id}", s.handleGetGrantRequest())
	mux.Handle("POST "+PathGrantRequests+"/{id}", s.handleGetGrantRequest())
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", s.handleReadyz())

	// The OAuth endpoints answer a wrong method in their own format, with a reason, like
	// every other error of theirs (the mux's own 405 is plain text). A pattern without a
	// method loses to the ones above for the methods they name.
	for path, allow := range map[string][]string{
		PathToken: {"POST"}, PathIntrospect: {"POST"}, PathRevoke: {"POST"},
		PathGrantRequests: {"POST"}, PathGrantRequests + "/{id}": {"GET", "POST"},
	} {
		mux.Handle(path, s.methodNotAllowed(allow))
	}
	return mux
}

func (s *Server) methodNotAllowed(allow []string) http.Handler {
	methods := strings.Join(allow, ", ")
	err := &oauthError{code: "invalid_request", reason: ReasonMalformedRequest,
		description: "this endpoint accepts " + strings.Join(allow, " or ") + " only", status: http.StatusMethodNotAllowed}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", methods)
		writeError(w, r, s.log, err)
	})
}
