// Package ui serves the operator web UI at /ui/: static pages embedded in
// the binary that read the admin API from the browser, and a small JSON
// summary of this node's request metrics for the page's table and chart.
package ui

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"log/slog"
	"net/http"
	"path"
	"strings"

	opsadmin "github.com/shoal-dev/shoal/ops/admin"
)

//go:embed static
var staticFS embed.FS

// Config configures the UI handler. Token and Open follow the admin API's
// rules, so the UI's own data is no more open than /admin/v1.
type Config struct {
	// Node is this node's name, shown in the page title and the summary.
	Node string
	// Token is the admin bearer token; empty disables the UI's API unless Open.
	Token string
	// Open serves the UI's API without a token (dev mode).
	Open bool
	// Metrics is this node's Prometheus registry.
	Metrics Gatherer
	Logger  *slog.Logger
}

// asset is one embedded file with what its answer needs.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves /ui/ (pages) and /ui/api/ (JSON).
type Handler struct {
	cfg    Config
	logger *slog.Logger
	assets map[string]asset
	mux    *http.ServeMux
}

// contentTypes is set explicitly rather than sniffed, so the answer does not
// depend on the host's mime tables.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".ico":  "image/x-icon",
}

// contentSecurityPolicy keeps the page to its own origin: nothing loads from
// a CDN and nothing inline runs.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// New returns the UI handler. Mount it at "/ui/" and "/ui".
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{cfg: cfg, logger: cfg.Logger.With("component", "ui"), assets: map[string]asset{}, mux: http.NewServeMux()}
	// The embedded tree is fixed at build time, so a walk error is a build bug.
	err := fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(b)
		h.assets[strings.TrimPrefix(p, "static/")] = asset{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("ui: embedded files: " + err.Error())
	}
	h.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	h.mux.HandleFunc("GET /ui/api/metrics", h.authorized(h.metrics))
	h.mux.HandleFunc("GET /ui/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no UI endpoint "+r.Method+" "+r.URL.Path)
	})
	h.mux.HandleFunc("GET /ui/{file...}", h.static)
	h.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path)
	})
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// static answers an embedded file. The files change only with the binary,
// so the browser revalidates each load (no-cache) and gets a 304 by ETag
// when nothing changed: an upgraded node never serves a stale script.
func (h *Handler) static(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if name == "" {
		name = "index.html"
	}
	a, ok := h.assets[name]
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "no UI file "+r.URL.Path)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	hd.Set("Referrer-Policy", "no-referrer")
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatches(match, a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(a.body)
	}
}

func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// authorized applies the admin API's token rules: open in dev, 403 when no
// token is configured, 401 without the right bearer token.
func (h *Handler) authorized(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if opsadmin.Authorized(w, r, h.cfg.Token, h.cfg.Open, "the admin API") {
			next(w, r)
		}
	}
}

// writeError answers the admin API's error shape, so the page reads one.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": "admin_error", "code": code}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
