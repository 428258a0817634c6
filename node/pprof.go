package node

import (
	"net/http"
	"net/http/pprof"

	opsadmin "github.com/shoal-dev/shoal/ops/admin"
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
		if opsadmin.Authorized(w, r, token, open, "/debug/pprof") {
			mux.ServeHTTP(w, r)
		}
	})
}
