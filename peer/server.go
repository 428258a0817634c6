package peer

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// HeaderFrom names the calling node on every peer-plane request.
const HeaderFrom = "X-Shoal-Peer"

// HeaderRefused is set on the server's own refusals (a caller that is not
// a member), so a caller can tell them from its handler's answers.
const HeaderRefused = "X-Shoal-Peer-Refused"

// Members tells the server who belongs to the cluster.
type Members interface {
	// Member reports whether name is a current member (a Raft server or a
	// live gossip member) whose advertised address has host.
	Member(name, host string) bool
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// Listener is Mux.Peer(). The server owns it.
	Listener net.Listener
	// TLS, when set, is the cluster's mutual-TLS configuration
	// (consensus.ClusterTLS): every connection must complete a handshake
	// with a certificate derived from the cluster key. Nil: plain TCP, and
	// only members' addresses are served.
	TLS *tls.Config
	// Members vets callers when TLS is nil.
	Members Members
	// Handler serves authenticated calls.
	Handler http.Handler
	// Logger receives refusals; nil discards.
	Logger *slog.Logger
}

// Server serves the peer plane.
type Server struct {
	cfg ServerConfig
	srv *http.Server
	ln  net.Listener
}

// NewServer returns a server; Serve starts it.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("component", "peer")
	s := &Server{cfg: cfg, ln: cfg.Listener}
	if cfg.TLS != nil {
		s.ln = tls.NewListener(cfg.Listener, cfg.TLS)
	}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: classifyTimeout,
		IdleTimeout:       2 * time.Minute,
		// Forwarded inference requests carry their client's headers, which
		// the HTTP port admits up to 64 KiB.
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s
}

// Serve serves until Close.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops the server and its open connections.
func (s *Server) Close() error { return s.srv.Close() }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	from := r.Header.Get(HeaderFrom)
	if from == "" {
		w.Header().Set(HeaderRefused, "1")
		Error(w, http.StatusForbidden, "peer_unknown", "peer plane: "+HeaderFrom+" is required")
		return
	}
	if s.cfg.TLS == nil {
		// Without a key the caller's address is all there is to check: it
		// must be a member's.
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil || s.cfg.Members == nil || !s.cfg.Members.Member(from, host) {
			s.cfg.Logger.Warn("refused peer call from a non-member", "from", from, "remote", r.RemoteAddr, "path", r.URL.Path)
			w.Header().Set(HeaderRefused, "1")
			Error(w, http.StatusForbidden, "peer_unknown", "peer plane: "+from+" at "+host+" is not a cluster member")
			return
		}
	}
	s.cfg.Handler.ServeHTTP(w, r)
}

// ErrorBody is the JSON error every peer-plane failure carries, shaped like
// the other APIs' errors.
type ErrorBody struct {
	Error struct {
		Message string `json:"message"`
		Code    string `json:"code"`
	} `json:"error"`
}

// Error writes a JSON error.
func Error(w http.ResponseWriter, status int, code, msg string) {
	var e ErrorBody
	e.Error.Message, e.Error.Code = msg, code
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}
