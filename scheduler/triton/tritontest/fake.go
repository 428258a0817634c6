// Package tritontest is a fake Triton Inference Server for tests: it serves
// the KServe v2 REST calls the triton backend makes (health, model config,
// infer, generate_stream) for one text model, answers a prompt p with
// "re: p", and records every call it receives.
package tritontest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
)

// Call is one request as the fake received it.
type Call struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// InferBody decodes the call's body as an infer request.
func (c Call) InferBody() (InferRequest, error) {
	var r InferRequest
	err := json.Unmarshal(c.Body, &r)
	return r, err
}

// InferRequest is an infer call's body.
type InferRequest struct {
	ID         string         `json:"id"`
	Parameters map[string]any `json:"parameters"`
	Inputs     []struct {
		Name     string   `json:"name"`
		Shape    []int    `json:"shape"`
		Datatype string   `json:"datatype"`
		Data     []string `json:"data"`
	} `json:"inputs"`
}

// Server is the fake. Set its fields before the calls that depend on them.
type Server struct {
	*httptest.Server
	// Model is the model it serves.
	Model string

	mu sync.Mutex
	// maxBatch is reported in the model's config.
	maxBatch int
	ready    bool
	// fail, when non-zero, answers every infer and generate call with this
	// status, the body {"error": failMsg} and Retry-After failRetry.
	fail      int
	failMsg   string
	failRetry string
	calls     []Call
}

// New starts a fake serving model with the given max_batch_size; it is
// ready. Close it when done.
func New(model string, maxBatch int) *Server {
	s := &Server{Model: model, maxBatch: maxBatch, ready: true}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// SetReady sets what the health and model readiness calls answer.
func (s *Server) SetReady(ready bool) {
	s.mu.Lock()
	s.ready = ready
	s.mu.Unlock()
}

// Fail makes every infer and generate call answer status with msg and a
// Retry-After header (if retryAfter is not empty); status 0 heals it.
func (s *Server) Fail(status int, msg, retryAfter string) {
	s.mu.Lock()
	s.fail, s.failMsg, s.failRetry = status, msg, retryAfter
	s.mu.Unlock()
}

// Calls returns the calls received so far whose path ends with suffix
// ("" for all).
func (s *Server) Calls(suffix string) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Call
	for _, c := range s.calls {
		if strings.HasSuffix(c.Path, suffix) {
			out = append(out, c)
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.calls = append(s.calls, Call{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	ready, maxBatch, fail, failMsg, failRetry := s.ready, s.maxBatch, s.fail, s.failMsg, s.failRetry
	s.mu.Unlock()
	model := "/v2/models/" + s.Model
	p := r.URL.Path
	if i := strings.Index(p, "/versions/"); i >= 0 {
		rest := p[i+len("/versions/"):]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			p = p[:i] + rest[j:]
		} else {
			p = p[:i]
		}
	}
	if strings.HasPrefix(p, "/v2/models/") && !strings.HasPrefix(p, model) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "Request for unknown model: '" + strings.TrimPrefix(p, "/v2/models/") + "' is not found"})
		return
	}
	switch p {
	case "/v2/health/ready", model + "/ready":
		if ready {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		return
	case model + "/config":
		writeJSON(w, http.StatusOK, map[string]any{"name": s.Model, "max_batch_size": maxBatch, "backend": "python"})
		return
	case model + "/infer", model + "/generate_stream":
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no route " + r.URL.Path})
		return
	}
	if fail != 0 {
		if failRetry != "" {
			w.Header().Set("Retry-After", failRetry)
		}
		writeJSON(w, fail, map[string]string{"error": failMsg})
		return
	}
	if strings.HasSuffix(p, "/generate_stream") {
		var req struct {
			TextInput string `json:"text_input"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		words := strings.Fields("re: " + req.TextInput)
		for i, word := range words {
			if i < len(words)-1 {
				word += " "
			}
			b, _ := json.Marshal(map[string]any{"model_name": s.Model, "model_version": "1", "text_output": word})
			fmt.Fprintf(w, "data: %s\n\n", b)
			w.(http.Flusher).Flush()
		}
		return
	}
	req := InferRequest{}
	if err := json.Unmarshal(body, &req); err != nil || len(req.Inputs) != 1 || req.Inputs[0].Name != "text_input" || req.Inputs[0].Datatype != "BYTES" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "expected one BYTES text_input tensor"})
		return
	}
	in := req.Inputs[0]
	if len(in.Shape) != 2 || in.Shape[1] != 1 || in.Shape[0] != len(in.Data) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("unexpected shape %v for %d elements", in.Shape, len(in.Data))})
		return
	}
	if maxBatch == 0 && in.Shape[0] != 1 || maxBatch > 0 && in.Shape[0] > maxBatch {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("batch of %d exceeds the model's max batch size %d", in.Shape[0], maxBatch)})
		return
	}
	out := make([][]string, len(in.Data))
	for i, d := range in.Data {
		out[i] = []string{"re: " + d}
	}
	writeJSON(w, http.StatusOK, map[string]any{"model_name": s.Model, "model_version": "1", "id": req.ID,
		"outputs": []map[string]any{{"name": "text_output", "datatype": "BYTES", "shape": []int{len(out), 1}, "data": out}}})
}
