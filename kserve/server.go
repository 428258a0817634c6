// Package kserve speaks the Open Inference Protocol (KServe v2, as Triton
// Inference Server serves it) on a node's HTTP port: server and model
// metadata, health, JSON-tensor infer for text models and Triton's
// generate extension. It translates each call into the node's own
// /v1/infer request and runs it through the node's request path (a
// Pipeline), so limits, cache, routing, batching, priorities, deadlines and
// metrics hold exactly as for /v1; it then translates the answer back.
package kserve

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Endpoint labels of the v2 calls that run inference, for the request
// metrics.
const (
	EndpointInfer          = "v2_infer"
	EndpointGenerate       = "v2_generate"
	EndpointGenerateStream = "v2_generate_stream"
)

// Version is the only version of every model this front reports; shoal's
// models are not versioned.
const Version = "1"

// Call describes a v2 call handed to the Pipeline.
type Call struct {
	// Endpoint labels the call in metrics (EndpointInfer, ...).
	Endpoint string
	// Path is the client's request path, which selects per-endpoint rate
	// limits.
	Path string
}

// Pipeline is the node's request path, as this front uses it. The node
// implements it; every method may be called concurrently.
type Pipeline interface {
	// ReadBody reads a request body as the node reads /v1 bodies: the
	// content type, gzip or zstd decoding and the size bound after
	// decoding. A refusal is an *Error with its status.
	ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, error)
	// Infer answers r, a POST /v1/infer request (its body a /v1/infer JSON
	// object), exactly as /v1/infer does (authentication, limits, cache,
	// routing, batching, deadline), writing the /v1/infer answer, an error
	// in OpenAI's shape or an event stream to w. It records the request
	// metrics under call.Endpoint.
	Infer(w http.ResponseWriter, r *http.Request, call Call)
	// Observe records a request this front refused before Infer.
	Observe(model, endpoint string, status int, took time.Duration)
	// Models lists the models served anywhere in the cluster.
	Models() []string
	// ModelReady reports whether some node can take requests for model now.
	ModelReady(model string) bool
	// Ready reports whether this node takes inference requests.
	Ready() bool
}

// Config configures a Server.
type Config struct {
	// Pipeline runs the requests.
	Pipeline Pipeline
	// ServerName and ServerVersion answer GET /v2.
	ServerName    string
	ServerVersion string
	// NotFound answers paths under /v2 that are no part of the protocol
	// (nil: a 404 in the protocol's shape), so they fail as the node's other
	// unknown paths do.
	NotFound http.Handler
	Logger   *slog.Logger
}

// Server answers the v2 REST protocol under /v2.
type Server struct {
	p        Pipeline
	name     string
	version  string
	notFound http.Handler
	logger   *slog.Logger
}

// New returns a Server; it holds no resources.
func New(cfg Config) (*Server, error) {
	if cfg.Pipeline == nil {
		return nil, errors.New("kserve: a pipeline is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "shoal"
	}
	return &Server{p: cfg.Pipeline, name: cfg.ServerName, version: cfg.ServerVersion, notFound: cfg.NotFound,
		logger: cfg.Logger.With("component", "kserve")}, nil
}

// ServeHTTP routes /v2 and everything below it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch path {
	case "/v2":
		if s.allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, r, http.StatusOK, map[string]any{"name": s.name, "version": s.version, "extensions": []string{"generate"}})
		}
		return
	case "/v2/health/live":
		if s.allow(w, r, http.MethodGet, http.MethodHead) {
			w.WriteHeader(http.StatusOK)
		}
		return
	case "/v2/health/ready":
		if s.allow(w, r, http.MethodGet, http.MethodHead) {
			if s.p.Ready() {
				w.WriteHeader(http.StatusOK)
			} else {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}
		return
	}
	rest, ok := strings.CutPrefix(path, "/v2/models/")
	if !ok && s.notFound != nil && !strings.HasPrefix(path, "/v2/health/") && !strings.HasPrefix(path, "/v2/repository") {
		s.notFound.ServeHTTP(w, r)
		return
	}
	if !ok || rest == "" {
		writeError(w, r, &Error{Status: http.StatusNotFound, Message: "no endpoint at " + r.URL.Path})
		return
	}
	model, version, action := splitModelPath(rest)
	if model == "" {
		writeError(w, r, &Error{Status: http.StatusNotFound, Message: "no endpoint at " + r.URL.Path})
		return
	}
	switch action {
	case "":
		if s.allow(w, r, http.MethodGet, http.MethodHead) {
			s.metadata(w, r, model, version)
		}
	case "ready":
		if s.allow(w, r, http.MethodGet, http.MethodHead) {
			switch {
			case !s.known(model, version):
				writeError(w, r, s.unknown(model, version))
			case s.p.ModelReady(model):
				w.WriteHeader(http.StatusOK)
			default:
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}
	case "infer":
		if s.allow(w, r, http.MethodPost) {
			s.run(w, r, model, version, EndpointInfer)
		}
	case "generate":
		if s.allow(w, r, http.MethodPost) {
			s.run(w, r, model, version, EndpointGenerate)
		}
	case "generate_stream":
		if s.allow(w, r, http.MethodPost) {
			s.run(w, r, model, version, EndpointGenerateStream)
		}
	}
}

// splitModelPath splits what follows /v2/models/ into the model name, the
// version and the action. It reads from the end, so a model name may hold
// slashes ("org/model").
func splitModelPath(rest string) (model, version, action string) {
	for _, a := range []string{"infer", "generate", "generate_stream", "ready"} {
		if m, ok := strings.CutSuffix(rest, "/"+a); ok {
			rest, action = m, a
			break
		}
	}
	if i := strings.LastIndex(rest, "/versions/"); i >= 0 {
		rest, version = rest[:i], rest[i+len("/versions/"):]
	}
	if m, err := url.PathUnescape(rest); err == nil {
		rest = m
	}
	return rest, version, action
}

func (s *Server) allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, r, &Error{Status: http.StatusMethodNotAllowed, Message: r.Method + " is not allowed on " + r.URL.Path + "; use " + strings.Join(methods, " or ")})
	return false
}

func (s *Server) known(model, version string) bool {
	if version != "" && version != Version {
		return false
	}
	for _, m := range s.p.Models() {
		if m == model {
			return true
		}
	}
	return false
}

func (s *Server) unknown(model, version string) *Error {
	if version != "" && version != Version {
		return &Error{Status: http.StatusNotFound, Message: "unknown version " + strconv.Quote(clip(version)) + " of model " + strconv.Quote(clip(model)) + " (versions: [\"1\"])"}
	}
	names := s.p.Models()
	sort.Strings(names)
	return &Error{Status: http.StatusNotFound, Message: "unknown model " + strconv.Quote(clip(model)) + "; served: " + strings.Join(names, ", ")}
}

type tensorMeta struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

func (s *Server) metadata(w http.ResponseWriter, r *http.Request, model, version string) {
	if !s.known(model, version) {
		writeError(w, r, s.unknown(model, version))
		return
	}
	writeJSON(w, r, http.StatusOK, map[string]any{
		"name": model, "versions": []string{Version}, "platform": "shoal",
		"inputs": []tensorMeta{
			{Name: TextInput, Datatype: "BYTES", Shape: []int64{-1, 1}},
			{Name: "max_tokens", Datatype: "INT32", Shape: []int64{1}},
			{Name: "temperature", Datatype: "FP32", Shape: []int64{1}},
			{Name: "top_p", Datatype: "FP32", Shape: []int64{1}},
			{Name: "seed", Datatype: "INT64", Shape: []int64{1}},
			{Name: "stop", Datatype: "BYTES", Shape: []int64{-1}},
		},
		"outputs": []tensorMeta{{Name: TextOutput, Datatype: "BYTES", Shape: []int64{-1, 1}}},
	})
}

// run decodes a v2 inference call, hands it to the pipeline as a /v1/infer
// request and translates the answer.
func (s *Server) run(w http.ResponseWriter, r *http.Request, model, version, endpoint string) {
	start := time.Now()
	fail := func(err error) {
		e := toError(err)
		label := "unknown"
		if s.known(model, "") {
			label = model
		}
		s.p.Observe(label, endpoint, e.Status, time.Since(start))
		writeError(w, r, e)
	}
	if version != "" && version != Version {
		fail(s.unknown(model, version))
		return
	}
	if r.Header.Get("Inference-Header-Content-Length") != "" {
		fail(&Error{Status: http.StatusBadRequest, Message: "the binary tensor extension is not supported; send JSON tensors"})
		return
	}
	body, err := s.p.ReadBody(w, r)
	if err != nil {
		fail(err)
		return
	}
	var req *TextRequest
	if endpoint == EndpointInfer {
		req, err = DecodeInfer(body)
	} else {
		req, err = DecodeGenerate(body, endpoint == EndpointGenerateStream)
	}
	if err != nil {
		fail(err)
		return
	}
	inner, err := internalRequest(r, model, req)
	if err != nil {
		fail(err)
		return
	}
	tw := &translator{dst: w, r: r, header: w.Header().Clone(), model: model, req: req, endpoint: endpoint}
	s.p.Infer(tw, inner, Call{Endpoint: endpoint, Path: r.URL.Path})
	tw.finish()
}

// v1Infer is the body of a /v1/infer request.
type v1Infer struct {
	Model      string    `json:"model"`
	Input      []string  `json:"input"`
	Parameters GenParams `json:"parameters"`
	Stream     bool      `json:"stream,omitempty"`
	Priority   string    `json:"priority,omitempty"`
}

// internalRequest builds the /v1/infer request that carries req through the
// pipeline: the client's context (request ID, deadline) and headers
// (authorization, priority, timeout, cache control), minus those that
// describe the v2 body.
func internalRequest(r *http.Request, model string, req *TextRequest) (*http.Request, error) {
	body, err := json.Marshal(v1Infer{Model: model, Input: req.Prompts, Parameters: req.Params, Stream: req.Stream, Priority: req.Params.Priority})
	if err != nil {
		return nil, badRequest("encode request: %v", err)
	}
	inner := r.Clone(r.Context())
	inner.URL = &url.URL{Path: "/v1/infer"}
	inner.RequestURI = "/v1/infer"
	inner.Method = http.MethodPost
	for _, h := range []string{"Content-Encoding", "Content-Length", "Accept-Encoding", "Inference-Header-Content-Length"} {
		inner.Header.Del(h)
	}
	inner.Header.Set("Content-Type", "application/json")
	if req.Params.Timeout > 0 {
		if ht := inner.Header.Get("X-Shoal-Timeout"); ht == "" {
			inner.Header.Set("X-Shoal-Timeout", req.Params.Timeout.String())
		}
	}
	inner.Body = io.NopCloser(bytes.NewReader(body))
	inner.GetBody = nil
	inner.ContentLength = int64(len(body))
	return inner, nil
}

// errorBody is the protocol's error shape.
type errorBody struct {
	Error string `json:"error"`
}

func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: http.StatusInternalServerError, Message: err.Error()}
}

func writeError(w http.ResponseWriter, r *http.Request, e *Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, r, e.Status, errorBody{Error: e.Message})
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"response encoding failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(append(b, '\n'))
	}
}
