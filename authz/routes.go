package authz

import "net/http"

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
	return mux
}
