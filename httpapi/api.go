package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shoal-dev/shoal/ratelimit"
	"github.com/shoal-dev/shoal/respcache"
	"github.com/shoal-dev/shoal/scheduler"
)

// Limits on request fields; they keep one request from monopolising a node.
const (
	maxMessages  = 1024
	maxPrompts   = 256
	maxStops     = 4
	maxStopLen   = 256
	maxMaxTokens = 1 << 16
	maxModelName = 256
)

// Request is a decoded, validated inference request of any endpoint.
type Request struct {
	Endpoint     scheduler.Endpoint
	Model        string
	Prompts      []string // completions and infer: one task per prompt
	Messages     []scheduler.Message
	Params       scheduler.Params
	Stream       bool
	IncludeUsage bool
	Priority     scheduler.Priority
	// PromptList records that the prompt/input came as an array, so infer
	// and completions answer with one output per element.
	PromptList bool
	// Charged is what the Limiter's Admit took from token-per-minute
	// limits, for its SettleTokens; empty for a request this node did not
	// admit.
	Charged TokenCharge
	// KeyHash is the hash of the client's API key ("" without one) once
	// KeyHashed is set: the Limiter records it, so the cache scope does
	// not hash the key a second time.
	KeyHash   string
	KeyHashed bool

	// The response-cache key and what it was computed under, once
	// API.cacheKey has computed it (keyed).
	keyMemo memoKey
	keyed   bool
	// memo is the request memo's entry this request was copied from.
	memo *reqMemoEntry
	// prefix is the prompt's block hashes once promptHashes has computed
	// them (prefixed): routing and the local run's record both need them.
	prefix   []uint64
	prefixed bool
}

// TokenCharge is a request's up-front charge to token-per-minute rules.
type TokenCharge struct {
	Rules  []ratelimit.Rule
	Tokens int       // the estimate charged to each rule
	At     time.Time // when, which fixes the window that holds it
}

// flexString accepts a JSON string, or an array of strings (for prompt,
// input and stop).
type flexString struct {
	list  []string
	isArr bool
	set   bool
}

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	f.set = true
	if bytes.Equal(b, []byte("null")) {
		f.set = false
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		f.isArr = true
		if err := json.Unmarshal(b, &f.list); err != nil {
			return typeError[flexString](b)
		}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return typeError[flexString](b)
	}
	f.list = []string{s}
	return nil
}

// typeError reports a value of the wrong JSON type as encoding/json's own
// type error, which the decoder stamps with the field's path, so the client
// learns which field was wrong.
func typeError[T any](b []byte) error {
	kind := "value"
	if len(b) > 0 {
		switch c := b[0]; {
		case c == '"':
			kind = "string"
		case c == '{':
			kind = "object"
		case c == '[':
			kind = "array"
		case c == 't' || c == 'f':
			kind = "bool"
		case c == 'n':
			kind = "null"
		default:
			kind = "number"
		}
	}
	return &json.UnmarshalTypeError{Value: kind, Type: reflect.TypeFor[T]()}
}

// expected names what a value of type t must be, in JSON terms.
func expected(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[flexString]():
		return "a string or an array of strings"
	case reflect.TypeFor[chatContent]():
		return "a string or an array of content parts"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return expected(t.Elem())
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		e := t.Elem()
		for e.Kind() == reflect.Pointer {
			e = e.Elem()
		}
		switch {
		case e.Kind() == reflect.String:
			return "an array of strings"
		case e.Kind() == reflect.Struct && e != reflect.TypeFor[flexString]() && e != reflect.TypeFor[chatContent]():
			return "an array of {" + strings.Join(jsonFields(e), ", ") + "} objects"
		}
		return "an array"
	}
	return "a valid value"
}

// jsonFields lists the JSON names of a struct's fields, embedded ones
// included.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// fieldType resolves a dotted JSON path (as encoding/json reports it,
// without array indexes) to the declared Go type of that field, so an
// error about an array's element can still describe the whole array.
func fieldType(t reflect.Type, path string) (reflect.Type, bool) {
	for _, name := range strings.Split(path, ".") {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil, false
		}
		f, ok := jsonField(t, name)
		if !ok {
			return nil, false
		}
		t = f
	}
	return t, true
}

func jsonField(t reflect.Type, name string) (reflect.Type, bool) {
	for f := range t.Fields() {
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			if ft, ok := jsonField(f.Type, name); ok {
				return ft, true
			}
			continue
		}
		if tag, _, _ := strings.Cut(f.Tag.Get("json"), ","); tag == name {
			return f.Type, true
		}
	}
	return nil, false
}

// plainJSONString reports whether b is a JSON string with no escapes or
// control characters, in valid UTF-8: its value is the bytes between the
// quotes.
func plainJSONString(b []byte) bool {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return false
	}
	for _, c := range b[1 : len(b)-1] {
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return utf8.Valid(b)
}

// chatContent accepts a message's content as a string or as an array of
// {"type":"text","text":...} parts, as OpenAI clients send it.
type chatContent struct {
	text string
}

func (c *chatContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(b, &parts); err != nil {
			return typeError[chatContent](b)
		}
		var sb strings.Builder
		for _, p := range parts {
			if p.Type != "text" {
				return fmt.Errorf("content part type %q is not supported (text only)", p.Type)
			}
			sb.WriteString(p.Text)
		}
		c.text = sb.String()
		return nil
	}
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	// What Unmarshal would return, without its decoder's allocations.
	if plainJSONString(b) {
		c.text = string(b[1 : len(b)-1])
		return nil
	}
	if err := json.Unmarshal(b, &c.text); err != nil {
		return typeError[chatContent](b)
	}
	return nil
}

type commonFields struct {
	Model         string         `json:"model"`
	MaxTokens     *int           `json:"max_tokens"`
	Temperature   *float64       `json:"temperature"`
	TopP          *float64       `json:"top_p"`
	N             *int           `json:"n"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options"`
	Stop          flexString     `json:"stop"`
	Seed          *int64         `json:"seed"`
	Priority      string         `json:"priority"`
	User          string         `json:"user"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatBody struct {
	commonFields
	Messages            []chatMessage `json:"messages"`
	MaxCompletionTokens *int          `json:"max_completion_tokens"`
}

type chatMessage struct {
	Role    string      `json:"role"`
	Content chatContent `json:"content"`
}

type completionBody struct {
	commonFields
	Prompt flexString `json:"prompt"`
}

type inferBody struct {
	Model      string     `json:"model"`
	Input      flexString `json:"input"`
	Parameters struct {
		MaxTokens   *int       `json:"max_tokens"`
		Temperature *float64   `json:"temperature"`
		TopP        *float64   `json:"top_p"`
		Seed        *int64     `json:"seed"`
		Stop        flexString `json:"stop"`
	} `json:"parameters"`
	Stream   bool   `json:"stream"`
	Priority string `json:"priority"`
}

// decodeStrict unmarshals one JSON value and rejects trailing data. Type
// errors name the offending field and what it takes, in JSON terms.
func decodeStrict(body []byte, v any) error {
	// A body that is one JSON value decodes the same through Unmarshal,
	// which reads the bytes in place (the Decoder copies them into its
	// own buffer). Unmarshal rejects anything after the value, so any
	// error takes the Decoder's path from a zero value: its errors, and
	// what it accepts, stay the contract.
	if err := json.Unmarshal(body, v); err == nil {
		return nil
	}
	reflect.ValueOf(v).Elem().SetZero()
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return describeJSONError(reflect.TypeOf(v), err)
	}
	if dec.More() {
		return badRequest("invalid_json", "request body has data after the JSON object")
	}
	return nil
}

func describeJSONError(body reflect.Type, err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		// Fields promoted from the embedded commonFields carry its name in
		// the path; the client knows them by their JSON names only.
		field := strings.TrimPrefix(te.Field, "commonFields.")
		if field == "" {
			return badRequest("invalid_json", "request body must be a JSON object")
		}
		want := te.Type
		if ft, ok := fieldType(body, field); ok {
			want = ft
		}
		// encoding/json says "number 1.5" for a number of the wrong kind.
		got, _, _ := strings.Cut(te.Value, " ")
		return badParam(field, fmt.Sprintf("%s must be %s; got a JSON %s", field, expected(want), got))
	case errors.As(err, &se):
		return badRequest("invalid_json", fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se))
	case strings.Contains(err.Error(), "json: "):
		// Errors from our UnmarshalJSON methods arrive wrapped without the
		// field name; the message still says what was expected.
		return badRequest("invalid_json", "invalid request: "+strings.TrimPrefix(err.Error(), "json: "))
	default:
		return badRequest("invalid_json", "malformed JSON: "+err.Error())
	}
}

func parsePriority(s string) (scheduler.Priority, error) {
	switch strings.ToLower(s) {
	case "", "normal":
		return scheduler.PriorityNormal, nil
	case "high":
		return scheduler.PriorityHigh, nil
	case "low":
		return scheduler.PriorityLow, nil
	}
	return 0, badParam("priority", fmt.Sprintf("priority must be \"high\", \"normal\" or \"low\", got %q", s))
}

func parseParams(maxTokens *int, temp, topP *float64, seed *int64, stop flexString) (scheduler.Params, error) {
	var p scheduler.Params
	if maxTokens != nil {
		if *maxTokens < 1 || *maxTokens > maxMaxTokens {
			return p, badParam("max_tokens", fmt.Sprintf("max_tokens must be between 1 and %d, got %d", maxMaxTokens, *maxTokens))
		}
		p.MaxTokens = *maxTokens
	}
	if temp != nil {
		if math.IsNaN(*temp) || *temp < 0 || *temp > 2 {
			return p, badParam("temperature", fmt.Sprintf("temperature must be between 0 and 2, got %g", *temp))
		}
		p.Temperature = *temp
	} else {
		p.Temperature = 1
	}
	if topP != nil {
		if math.IsNaN(*topP) || *topP <= 0 || *topP > 1 {
			return p, badParam("top_p", fmt.Sprintf("top_p must be greater than 0 and at most 1, got %g", *topP))
		}
		p.TopP = *topP
	}
	p.Seed = seed
	if len(stop.list) > maxStops {
		return p, badParam("stop", fmt.Sprintf("stop may hold at most %d sequences, got %d", maxStops, len(stop.list)))
	}
	for _, s := range stop.list {
		if s == "" || len(s) > maxStopLen {
			return p, badParam("stop", fmt.Sprintf("each stop sequence must be 1 to %d bytes", maxStopLen))
		}
	}
	p.Stop = stop.list
	return p, nil
}

func checkModel(model string) error {
	if model == "" {
		return badParam("model", "model is required")
	}
	if len(model) > maxModelName {
		return badParam("model", "model name is too long")
	}
	return nil
}

func checkN(n *int) error {
	if n != nil && *n != 1 {
		return badParam("n", fmt.Sprintf("n must be 1 (one choice per request), got %d", *n))
	}
	return nil
}

// decodeChat parses a /v1/chat/completions body.
func decodeChat(body []byte) (*Request, error) {
	// The body, the request and room for one message in one allocation
	// (the body escapes into the decoder anyway).
	all := &struct {
		req  Request
		b    chatBody
		msg1 [1]scheduler.Message
	}{}
	b := &all.b
	if !fastChat(body, b) {
		*b = chatBody{}
		if err := decodeStrict(body, b); err != nil {
			return nil, err
		}
	}
	if err := checkModel(b.Model); err != nil {
		return nil, err
	}
	if err := checkN(b.N); err != nil {
		return nil, err
	}
	if len(b.Messages) == 0 {
		return nil, badParam("messages", "messages must hold at least one message")
	}
	if len(b.Messages) > maxMessages {
		return nil, badParam("messages", fmt.Sprintf("messages may hold at most %d messages", maxMessages))
	}
	msgs := all.msg1[:]
	if len(b.Messages) > 1 {
		msgs = make([]scheduler.Message, len(b.Messages))
	}
	for i, m := range b.Messages {
		switch m.Role {
		case "system", "user", "assistant", "developer", "tool":
		default:
			return nil, badParam(fmt.Sprintf("messages[%d].role", i), fmt.Sprintf("messages[%d].role must be system, developer, user, assistant or tool, got %q", i, m.Role))
		}
		msgs[i] = scheduler.Message{Role: m.Role, Content: m.Content.text}
	}
	maxTok := b.MaxTokens
	if b.MaxCompletionTokens != nil {
		maxTok = b.MaxCompletionTokens
	}
	p, err := parseParams(maxTok, b.Temperature, b.TopP, b.Seed, b.Stop)
	if err != nil {
		return nil, err
	}
	prio, err := parsePriority(b.Priority)
	if err != nil {
		return nil, err
	}
	all.req = Request{
		Endpoint: scheduler.EndpointChat, Model: b.Model, Messages: msgs, Params: p,
		Stream: b.Stream, IncludeUsage: b.StreamOptions != nil && b.StreamOptions.IncludeUsage, Priority: prio,
	}
	return &all.req, nil
}

// decodeCompletion parses a /v1/completions body.
func decodeCompletion(body []byte) (*Request, error) {
	var b completionBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	if err := checkN(b.N); err != nil {
		return nil, err
	}
	maxTok := b.MaxTokens
	if maxTok == nil {
		// OpenAI's completions default.
		d := 16
		maxTok = &d
	}
	return promptRequest(scheduler.EndpointCompletion, "prompt", b.Model, b.Prompt, b.Stream, b.Priority,
		b.StreamOptions != nil && b.StreamOptions.IncludeUsage, maxTok, b.Temperature, b.TopP, b.Seed, b.Stop)
}

// decodeInfer parses a /v1/infer body.
func decodeInfer(body []byte) (*Request, error) {
	var b inferBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	pp := b.Parameters
	return promptRequest(scheduler.EndpointInfer, "input", b.Model, b.Input, b.Stream, b.Priority, false,
		pp.MaxTokens, pp.Temperature, pp.TopP, pp.Seed, pp.Stop)
}

// promptRequest validates the fields completions and infer share: a model,
// one or more prompts (one only when streaming), generation parameters and
// a priority.
func promptRequest(ep scheduler.Endpoint, field, model string, prompts flexString, stream bool, priority string, includeUsage bool,
	maxTok *int, temp, topP *float64, seed *int64, stop flexString) (*Request, error) {
	if err := checkModel(model); err != nil {
		return nil, err
	}
	if err := checkPrompts(field, prompts); err != nil {
		return nil, err
	}
	if stream && len(prompts.list) > 1 {
		return nil, badParam(field, "stream supports a single "+field)
	}
	p, err := parseParams(maxTok, temp, topP, seed, stop)
	if err != nil {
		return nil, err
	}
	prio, err := parsePriority(priority)
	if err != nil {
		return nil, err
	}
	return &Request{Endpoint: ep, Model: model, Prompts: prompts.list, PromptList: prompts.isArr,
		Params: p, Stream: stream, IncludeUsage: includeUsage, Priority: prio}, nil
}

func checkPrompts(field string, f flexString) error {
	if !f.set || len(f.list) == 0 {
		return badParam(field, field+" is required: a string or a non-empty array of strings")
	}
	if len(f.list) > maxPrompts {
		return badParam(field, fmt.Sprintf("%s may hold at most %d strings", field, maxPrompts))
	}
	return nil
}

// requests expands an API request into one scheduler request per prompt.
func (a *Request) requests(id string) []*scheduler.Request {
	if a.Endpoint == scheduler.EndpointChat {
		return []*scheduler.Request{a.chatRequest(id)}
	}
	out := make([]*scheduler.Request, len(a.Prompts))
	for i, p := range a.Prompts {
		out[i] = &scheduler.Request{ID: fmt.Sprintf("%s-%d", id, i), Model: a.Model, Endpoint: a.Endpoint, Prompt: p, Params: a.Params, Priority: a.Priority, Stream: a.Stream}
	}
	return out
}

// chatRequest is a chat's one scheduler request.
func (a *Request) chatRequest(id string) *scheduler.Request {
	return &scheduler.Request{ID: id, Model: a.Model, Endpoint: a.Endpoint, Messages: a.Messages, Params: a.Params, Priority: a.Priority, Stream: a.Stream}
}

// cacheInput is what of the request decides its answer.
func (a *Request) cacheInput(scope string) respcache.KeyInput {
	return respcache.KeyInput{Model: a.Model, Endpoint: a.Endpoint, Messages: a.Messages, Prompts: a.Prompts, Params: a.Params, Scope: scope}
}
