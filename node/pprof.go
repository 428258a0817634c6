package node

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"strings"
)

// pprofHandler serves net/http/pprof under /debug/pprof/ on the HTTP port,
// guarded as the admin API is: open in --dev without a token, 403 when no
// admin token is configured, 401 without the right bearer token. Profiles
// reveal memory contents and cost CPU, so they are never public.
func (n *Node) pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	token := n.cfg.Admin.Token
	open := n.cfg.Dev && token == ""
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !open {
			if token == "" {
				pprofError(w, http.StatusForbidden, "admin_disabled", "/debug/pprof is disabled: set admin.token or SHOAL_ADMIN_TOKEN")
				return
			}
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="shoal-admin"`)
				pprofError(w, http.StatusUnauthorized, "unauthorized", "unauthorized")
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

func pprofError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": "admin_error", "param": nil, "code": code}})
}
