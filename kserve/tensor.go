package kserve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// Bounds on what one request may carry; the pipeline applies its own
// limits on top (prompt count, max_tokens range).
const (
	maxInputs      = 16
	maxElements    = 256
	maxShapeDims   = 4
	maxNameLen     = 256
	maxStops       = 4
	maxParamString = 4096
)

// TextInput and TextOutput are the tensor names Triton's LLM backends
// (vLLM, TensorRT-LLM) use for a prompt and its completion.
const (
	TextInput  = "text_input"
	TextOutput = "text_output"
)

// Error is an error with the HTTP status the protocol answers it with.
type Error struct {
	Status     int
	Message    string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Message }

func badRequest(format string, args ...any) *Error {
	return &Error{Status: 400, Message: fmt.Sprintf(format, args...)}
}

// Tensor is one input tensor of an infer request in the JSON encoding:
// data is row-major and may be flat or nested.
type Tensor struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data"`
}

// inferRequest is the body of POST /v2/models/{name}/infer.
type inferRequest struct {
	ID         string          `json:"id"`
	Parameters json.RawMessage `json:"parameters"`
	Inputs     []Tensor        `json:"inputs"`
	Outputs    []struct {
		Name       string          `json:"name"`
		Parameters json.RawMessage `json:"parameters"`
	} `json:"outputs"`
}

// TextRequest is a decoded text-generation request, of either the infer or
// the generate shape.
type TextRequest struct {
	ID      string
	Prompts []string
	// Shape is the text_input tensor's shape, echoed on text_output.
	Shape  []int64
	Params GenParams
	Stream bool
}

// GenParams are the generation parameters, nil where the request did not
// set them.
type GenParams struct {
	MaxTokens   *int64   `json:"max_tokens,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	TopP        *float64 `json:"top_p,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	Stop        []string `json:"stop,omitempty"`
	// Priority is "high", "normal" or "low"; Triton's integer priority
	// (1 highest) is mapped onto them.
	Priority string `json:"-"`
	// Timeout is Triton's request timeout (the "timeout" parameter, in
	// microseconds); zero when unset.
	Timeout time.Duration `json:"-"`
}

// DecodeInfer parses and validates the JSON body of an infer request for a
// text model: one BYTES text_input tensor of shape [n] or [n, 1], optional
// scalar tensors for generation parameters, and parameters in the request's
// "parameters" object.
func DecodeInfer(body []byte) (*TextRequest, error) {
	var b inferRequest
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	if len(b.ID) > maxNameLen {
		return nil, badRequest("id is longer than %d bytes", maxNameLen)
	}
	req := &TextRequest{ID: b.ID}
	if err := req.Params.fromObject(b.Parameters, "parameters"); err != nil {
		return nil, err
	}
	if len(b.Inputs) == 0 {
		return nil, badRequest("inputs must hold a %s tensor", TextInput)
	}
	if len(b.Inputs) > maxInputs {
		return nil, badRequest("inputs may hold at most %d tensors", maxInputs)
	}
	seen := map[string]bool{}
	for i := range b.Inputs {
		t := &b.Inputs[i]
		if seen[t.Name] {
			return nil, badRequest("input %q appears twice", t.Name)
		}
		seen[t.Name] = true
		if t.Name == TextInput {
			if t.Datatype != "BYTES" {
				return nil, badRequest("input %s must have datatype BYTES, got %q", TextInput, t.Datatype)
			}
			n, err := checkShape(t.Name, t.Shape)
			if err != nil {
				return nil, err
			}
			if len(t.Shape) > 2 || (len(t.Shape) == 2 && t.Shape[1] != 1) {
				return nil, badRequest("input %s must have shape [n] or [n, 1], got %v", TextInput, t.Shape)
			}
			strs, err := t.strings(n)
			if err != nil {
				return nil, err
			}
			req.Prompts, req.Shape = strs, t.Shape
			continue
		}
		if err := req.scalarInput(t); err != nil {
			return nil, err
		}
	}
	if req.Prompts == nil {
		return nil, badRequest("inputs must hold a %s tensor", TextInput)
	}
	for _, o := range b.Outputs {
		if o.Name != TextOutput {
			return nil, badRequest("unknown output %q: this model produces %s only", clip(o.Name), TextOutput)
		}
	}
	if req.Stream {
		return nil, badRequest("stream is not supported on infer; use generate_stream")
	}
	return req, nil
}

// scalarInput reads a one-element tensor that carries a generation
// parameter, as TensorRT-LLM's ensemble takes them.
func (r *TextRequest) scalarInput(t *Tensor) error {
	n, err := checkShape(t.Name, t.Shape)
	if err != nil {
		return err
	}
	want := ""
	switch t.Name {
	case "max_tokens", "seed", "random_seed":
		want = "INT"
	case "temperature", "top_p":
		want = "FP"
	case "stop", "stop_words":
		want = "BYTES"
	case "stream":
		want = "BOOL"
	default:
		return badRequest("unknown input %q: this model takes %s and the scalar parameters max_tokens, temperature, top_p, seed, stop, stream", clip(t.Name), TextInput)
	}
	ok := t.Datatype == want
	switch want {
	case "INT":
		ok = isIntType(t.Datatype)
	case "FP":
		ok = isFloatType(t.Datatype)
	}
	if !ok {
		return badRequest("input %s has the wrong datatype %q", t.Name, t.Datatype)
	}
	if want == "BYTES" {
		strs, err := t.strings(n)
		if err != nil {
			return err
		}
		return r.Params.setStops(t.Name, strs)
	}
	if n != 1 {
		return badRequest("input %s must hold one element, got %d", t.Name, n)
	}
	var vals []json.RawMessage
	if err := flatten(t.Data, &vals, 0); err != nil || len(vals) != 1 {
		return badRequest("input %s: data must hold one %s value", t.Name, t.Datatype)
	}
	if err := r.Params.set(t.Name, vals[0], &r.Stream); err != nil {
		return badRequest("input %s: %v", t.Name, err)
	}
	return nil
}

func isIntType(dt string) bool {
	switch dt {
	case "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64":
		return true
	}
	return false
}

func isFloatType(dt string) bool { return dt == "FP16" || dt == "FP32" || dt == "FP64" || dt == "BF16" }

// checkShape validates a shape and returns its element count.
func checkShape(name string, shape []int64) (int, error) {
	if len(shape) == 0 || len(shape) > maxShapeDims {
		return 0, badRequest("input %s: shape must have 1 to %d dimensions, got %v", clip(name), maxShapeDims, shape)
	}
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, badRequest("input %s: shape %v has a negative dimension", clip(name), shape)
		}
		n *= d
		if n > maxElements {
			return 0, &Error{Status: 413, Message: fmt.Sprintf("input %s: shape %v holds more than %d elements", clip(name), shape, maxElements)}
		}
	}
	if n == 0 {
		return 0, badRequest("input %s: shape %v holds no elements", clip(name), shape)
	}
	return int(n), nil
}

// strings reads a BYTES tensor's data: n JSON strings, flat or nested.
func (t *Tensor) strings(n int) ([]string, error) {
	var vals []json.RawMessage
	if err := flatten(t.Data, &vals, 0); err != nil {
		return nil, badRequest("input %s: %v", clip(t.Name), err)
	}
	if len(vals) != n {
		return nil, badRequest("input %s: shape %v needs %d elements, data holds %d", clip(t.Name), t.Shape, n, len(vals))
	}
	out := make([]string, n)
	for i, v := range vals {
		if err := json.Unmarshal(v, &out[i]); err != nil {
			return nil, badRequest("input %s: element %d must be a string (datatype BYTES)", clip(t.Name), i)
		}
	}
	return out, nil
}

// flatten appends the leaves of a (possibly nested) JSON array to out,
// refusing more than maxElements leaves or deeper nesting than a shape may
// have.
func flatten(raw json.RawMessage, out *[]json.RawMessage, depth int) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		if depth == 0 {
			return fmt.Errorf("data must be an array")
		}
		if len(*out) >= maxElements {
			return fmt.Errorf("data holds more than %d elements", maxElements)
		}
		*out = append(*out, raw)
		return nil
	}
	if depth >= maxShapeDims {
		return fmt.Errorf("data is nested deeper than %d levels", maxShapeDims)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return fmt.Errorf("data is not a JSON array")
	}
	for _, it := range items {
		if err := flatten(it, out, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// generateRequest is what decodeGenerate reads beyond the parameters.
type generateRequest struct {
	ID         string          `json:"id"`
	TextInput  json.RawMessage `json:"text_input"`
	Parameters json.RawMessage `json:"parameters"`
}

// DecodeGenerate parses the body of Triton's generate extension: a
// text_input string, generation parameters as top-level keys (as the model's
// scalar inputs) or in "parameters". Keys it does not know are ignored, as
// LLM clients send backend-specific ones (bad_words, end_id).
func DecodeGenerate(body []byte, stream bool) (*TextRequest, error) {
	var b generateRequest
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	if len(b.ID) > maxNameLen {
		return nil, badRequest("id is longer than %d bytes", maxNameLen)
	}
	req := &TextRequest{ID: b.ID, Shape: []int64{1, 1}}
	raw := bytes.TrimSpace(b.TextInput)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, badRequest("%s is required: a string", TextInput)
	}
	var prompt string
	if err := json.Unmarshal(raw, &prompt); err != nil {
		var list []string
		if err := json.Unmarshal(raw, &list); err != nil || len(list) != 1 {
			return nil, badRequest("%s must be a string", TextInput)
		}
		prompt = list[0]
	}
	req.Prompts = []string{prompt}
	// Top-level keys first, then "parameters", which wins.
	if err := req.Params.fromObject(body, ""); err != nil {
		return nil, err
	}
	if err := req.Params.fromObject(b.Parameters, "parameters"); err != nil {
		return nil, err
	}
	var flags struct {
		Stream     *bool `json:"stream"`
		Parameters struct {
			Stream *bool `json:"stream"`
		} `json:"parameters"`
	}
	_ = json.Unmarshal(body, &flags)
	if (flags.Stream != nil && *flags.Stream != stream) || (flags.Parameters.Stream != nil && *flags.Parameters.Stream != stream) {
		if stream {
			return nil, badRequest("stream must not be false on generate_stream")
		}
		return nil, badRequest("stream is not supported on generate; use generate_stream")
	}
	req.Stream = stream
	return req, nil
}

// fromObject reads the generation parameters out of a JSON object; other
// keys are ignored. where names the object in errors ("" for the top level).
func (p *GenParams) fromObject(raw json.RawMessage, where string) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return badRequest("%s must be a JSON object", where)
	}
	var stream bool
	for _, k := range []string{"max_tokens", "temperature", "top_p", "seed", "random_seed", "stop", "stop_words", "priority", "timeout"} {
		v, ok := obj[k]
		if !ok {
			continue
		}
		name := k
		if where != "" {
			name = where + "." + k
		}
		if k == "stop" || k == "stop_words" {
			var s string
			var list []string
			switch {
			case json.Unmarshal(v, &s) == nil:
				if s != "" {
					list = []string{s}
				}
			case json.Unmarshal(v, &list) == nil:
			default:
				return badRequest("%s must be a string or an array of strings", name)
			}
			if err := p.setStops(name, list); err != nil {
				return err
			}
			continue
		}
		if err := p.set(k, v, &stream); err != nil {
			return badRequest("%s: %v", name, err)
		}
	}
	return nil
}

func (p *GenParams) setStops(name string, list []string) error {
	var out []string
	for _, s := range list {
		if s == "" {
			continue
		}
		if len(s) > maxParamString {
			return badRequest("%s: a stop sequence is longer than %d bytes", name, maxParamString)
		}
		out = append(out, s)
	}
	if len(out) > maxStops {
		return badRequest("%s may hold at most %d sequences, got %d", name, maxStops, len(out))
	}
	p.Stop = out
	return nil
}

// set reads one scalar parameter. Ranges are checked by the pipeline, as
// for /v1; here only the JSON type is.
func (p *GenParams) set(name string, v json.RawMessage, stream *bool) error {
	switch name {
	case "max_tokens", "seed", "random_seed":
		var f float64
		if err := json.Unmarshal(v, &f); err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return fmt.Errorf("%s must be an integer", name)
		}
		n := int64(f)
		if name == "max_tokens" {
			p.MaxTokens = &n
		} else {
			p.Seed = &n
		}
	case "temperature", "top_p":
		var f float64
		if err := json.Unmarshal(v, &f); err != nil {
			return fmt.Errorf("%s must be a number", name)
		}
		if name == "temperature" {
			p.Temperature = &f
		} else {
			p.TopP = &f
		}
	case "stream":
		if err := json.Unmarshal(v, stream); err != nil {
			return fmt.Errorf("stream must be a boolean")
		}
	case "priority":
		var s string
		if json.Unmarshal(v, &s) == nil {
			p.Priority = s
			return nil
		}
		var n int64
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("priority must be \"high\", \"normal\", \"low\" or Triton's integer level")
		}
		// Triton: 0 is the model's default, 1 the highest, larger lower.
		switch {
		case n == 0:
			p.Priority = "normal"
		case n == 1:
			p.Priority = "high"
		case n == 2:
			p.Priority = "normal"
		default:
			p.Priority = "low"
		}
	case "timeout":
		var us int64
		if err := json.Unmarshal(v, &us); err != nil || us < 0 {
			return fmt.Errorf("timeout must be a non-negative integer of microseconds")
		}
		if us > int64(24*time.Hour/time.Microsecond) {
			us = int64(24 * time.Hour / time.Microsecond)
		}
		p.Timeout = time.Duration(us) * time.Microsecond
	}
	return nil
}

// decodeStrict unmarshals one JSON object and rejects trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te) && te.Field != "":
			return badRequest("%s: expected %s, got JSON %s", te.Field, te.Type, te.Value)
		case errors.As(err, &te):
			return badRequest("request body must be a JSON object")
		case errors.As(err, &se):
			return badRequest("malformed JSON at byte %d: %v", se.Offset, se)
		}
		return badRequest("malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("request body has data after the JSON object")
	}
	return nil
}

// clip bounds client text echoed in an error.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
