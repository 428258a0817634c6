package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/scheduler"
)

// decoderSeeds are realistic and hostile bodies shared by the decoder
// fuzz targets.
var decoderSeeds = []string{
	`{"model":"sim-fast","messages":[{"role":"user","content":"hi"}]}`,
	`{"model":"sim-fast","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_tokens":16,"temperature":0.2,"top_p":0.9,"seed":7,"stop":["\n","END"],"stream":true,"stream_options":{"include_usage":true},"priority":"high","n":1,"user":"u"}`,
	`{"model":"sim-fast","messages":[{"role":"user","content":null}],"max_completion_tokens":3}`,
	`{"model":"sim-fast","prompt":"Once upon a time","max_tokens":5}`,
	`{"model":"sim-fast","prompt":["a","b","c"],"stop":"x","temperature":2}`,
	`{"model":"sim-fast","input":"text","parameters":{"max_tokens":32,"temperature":0,"stop":["."]}}`,
	`{"model":"sim-fast","input":["a","b"],"parameters":{"top_p":1,"seed":-1},"priority":"low"}`,
	`{"model":"sim-fast","input":"x","stream":true}`,
	`{"model":"","prompt":"x"}`,
	`{"model":"m","max_tokens":-1,"prompt":"x","messages":[],"input":[]}`,
	`{"model":"m","max_tokens":1e400,"temperature":NaN}`,
	`{"model":"m","temperature":-0,"top_p":1e-320,"max_tokens":65536}`,
	`{"model":"m","prompt":5,"input":{"a":1},"messages":"hi","stop":[1,2]}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`,
	`{"model":"m","prompt":"x"} trailing`,
	`{"model":"m","prompt":"\ud800\udc00 \u0000 ` + "\xff\xfe" + `"}`,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
	`{"model":"m","prompt":"x","extra":{"a":{"b":{"c":[1,2,{"d":null}]}}}}`,
	`{"model":"m","model":"dup","prompt":"x"}`,
	`null`, `""`, `0`, `{}`, ``,
}

// checkDecoded states what every decoder promises: an error is a 400 in
// OpenAI's shape, and a success is a request the scheduler can run.
func checkDecoded(t *testing.T, req *Request, err error) {
	if err != nil {
		var ae *Error
		if !errors.As(err, &ae) {
			t.Fatalf("error is not an Error: %T %v", err, err)
		}
		if ae.Status != http.StatusBadRequest || ae.Message == "" || ae.Code == "" || ae.Type == "" {
			t.Fatalf("bad error answer: %+v", ae)
		}
		return
	}
	if req.Model == "" || len(req.Model) > maxModelName {
		t.Fatalf("model %q accepted", req.Model)
	}
	p := req.Params
	if p.MaxTokens < 0 || p.MaxTokens > maxMaxTokens {
		t.Fatalf("max_tokens %d accepted", p.MaxTokens)
	}
	if math.IsNaN(p.Temperature) || p.Temperature < 0 || p.Temperature > 2 {
		t.Fatalf("temperature %g accepted", p.Temperature)
	}
	if math.IsNaN(p.TopP) || p.TopP < 0 || p.TopP > 1 {
		t.Fatalf("top_p %g accepted", p.TopP)
	}
	if len(p.Stop) > maxStops {
		t.Fatalf("%d stop strings accepted", len(p.Stop))
	}
	for _, s := range p.Stop {
		if s == "" || len(s) > maxStopLen {
			t.Fatalf("stop %q accepted", s)
		}
	}
	if req.Priority < scheduler.PriorityLow || req.Priority > scheduler.PriorityHigh {
		t.Fatalf("priority %d", req.Priority)
	}
	switch req.Endpoint {
	case scheduler.EndpointChat:
		if len(req.Messages) == 0 || len(req.Messages) > maxMessages {
			t.Fatalf("%d messages accepted", len(req.Messages))
		}
		for _, m := range req.Messages {
			if !strings.Contains(" system developer user assistant tool ", " "+m.Role+" ") {
				t.Fatalf("role %q accepted", m.Role)
			}
		}
	default:
		if len(req.Prompts) == 0 || len(req.Prompts) > maxPrompts {
			t.Fatalf("%d prompts accepted", len(req.Prompts))
		}
		if req.Stream && len(req.Prompts) != 1 {
			t.Fatalf("stream with %d prompts accepted", len(req.Prompts))
		}
	}
	reqs := req.requests("id")
	if len(reqs) == 0 {
		t.Fatal("no scheduler requests")
	}
	for _, r := range reqs {
		if r.Model != req.Model || r.Endpoint != req.Endpoint {
			t.Fatalf("request %+v does not match %+v", r, req)
		}
	}
}

func fuzzDecoder(f *testing.F, endpoint scheduler.Endpoint, decode decoder) {
	for _, s := range decoderSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decode(body)
		if err == nil && req.Endpoint != endpoint {
			t.Fatalf("endpoint %q from the %q decoder", req.Endpoint, endpoint)
		}
		checkDecoded(t, req, err)
	})
}

func FuzzDecodeChat(f *testing.F) { fuzzDecoder(f, scheduler.EndpointChat, decodeChat) }

func FuzzDecodeCompletion(f *testing.F) {
	fuzzDecoder(f, scheduler.EndpointCompletion, decodeCompletion)
}

func FuzzDecodeInfer(f *testing.F) { fuzzDecoder(f, scheduler.EndpointInfer, decodeInfer) }

func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{"2s", "500ms", "1.5", "0.001", "1h30m", "0", "-1s", "", " 3s ", "soon", "1e400", "1e10", "9223372036854775807",
		"NaN", "Infinity", "1e-12", "0.0000000001s", "2562047h", "2562048h", "\x00", "3 s", "-0", "1e9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, aerr := parseTimeout(v)
		if aerr != nil {
			if aerr.Status != http.StatusBadRequest || aerr.Param != "X-Shoal-Timeout" {
				t.Fatalf("bad error answer: %+v", aerr)
			}
			return
		}
		if d <= 0 {
			t.Fatalf("timeout %q parsed to non-positive %v", v, d)
		}
	})
}

func TestParseTimeoutForms(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"2s", "2s"}, {"500ms", "500ms"}, {"1.5", "1.5s"}, {" 3s ", "3s"}, {"1e10", "2562047h47m16.854775807s"},
	} {
		d, aerr := parseTimeout(tc.in)
		if aerr != nil {
			t.Fatalf("%q: %v", tc.in, aerr)
		}
		if d.String() != tc.want {
			t.Fatalf("%q parsed to %v, want %s", tc.in, d, tc.want)
		}
	}
	for _, bad := range []string{"", "soon", "0", "-1s", "-0", "0.0000000001"} {
		if _, aerr := parseTimeout(bad); aerr == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

// decodeStrictDecoder is decodeStrict as it was before its Unmarshal fast
// path: the contract the fast path must keep.
func decodeStrictDecoder(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return describeJSONError(reflect.TypeOf(v), err)
	}
	if dec.More() {
		return badRequest("invalid_json", "request body has data after the JSON object")
	}
	return nil
}

// FuzzDecodeStrictSame checks decodeStrict decodes every body to the same
// value, or the same error, as the Decoder alone did.
func FuzzDecodeStrictSame(f *testing.F) {
	for _, s := range decoderSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{`{} }`, `{"model":"m"}]`, ` {"model":"m"} `, `{"model":"m"} {}`, `{"model":"m"}x`} {
		f.Add([]byte(s))
	}
	same := func(t *testing.T, body []byte, got, want any) {
		errGot := decodeStrict(body, got)
		errWant := decodeStrictDecoder(body, want)
		if fmt.Sprint(errGot) != fmt.Sprint(errWant) {
			t.Fatalf("error %v, the Decoder's %v", errGot, errWant)
		}
		if errGot == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded %+v, the Decoder %+v", got, want)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		same(t, body, &chatBody{}, &chatBody{})
		same(t, body, &completionBody{}, &completionBody{})
		same(t, body, &inferBody{}, &inferBody{})
	})
}

// FuzzPlainJSONString checks the content fast path reads a string as
// encoding/json does.
func FuzzPlainJSONString(f *testing.F) {
	for _, s := range []string{`"hi"`, `"a\"b"`, `"\u00e9"`, `"é"`, "\"\xff\"", `""`, `"`, `"a"b"`, "\"\t\"", `null`, `["a"]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !plainJSONString(b) {
			return
		}
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("plain string %q does not decode: %v", b, err)
		}
		if s != string(b[1:len(b)-1]) {
			t.Fatalf("%q decodes to %q", b, s)
		}
		var c chatContent
		if err := c.UnmarshalJSON(b); err != nil || c.text != s {
			t.Fatalf("content %q: %q, %v", b, c.text, err)
		}
	})
}

// FuzzFastChat checks that whatever chat body fastChat decodes, encoding/json decodes without
// error to the same value.
func FuzzFastChat(f *testing.F) {
	for _, s := range decoderSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		` { "model" : "m" , "messages" : [ { "role" : "user" , "content" : "hi" } ] } `,
		`{"model":"m","messages":[null,{"name":"x","role":"user","content":"a\"b\u00e9"}],"seed":-9223372036854775808}`,
		`{"Model":"m","messages":[]}`, `{"model":"m","messages":[{"ROLE":"user"}]}`,
		`{"model":"m","messages":[],"messages":null}`, `{"model":"m","max_tokens":1.0,"n":1e2,"temperature":1E2}`,
		`{"model":"m","stream":null,"stream_options":{"include_usage":false,"x":[1]},"priority":null}`,
		`{"model":"m","stream_options":{"include_usage":1}}`, `{"model":"m","user":"\u0000","unknown":"\ud800"}`,
		`{"model":"m","max_tokens":9223372036854775808}`, `{"model":"m","top_p":-0.0e-0}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var fast chatBody
		if !fastChat(body, &fast) {
			return
		}
		var want chatBody
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("fastChat decoded a body encoding/json rejects (%v): %+v", err, fast)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("fastChat %+v, encoding/json %+v", fast, want)
		}
	})
}

// The fast path takes the bodies OpenAI clients send, and leaves the rest to encoding/json.
func TestFastChatTakesCommonBodies(t *testing.T) {
	for body, want := range map[string]bool{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`: true,
		`{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"model":"m","temperature":0.7,"max_tokens":64,"stream":true,"stream_options":{"include_usage":true},"user":"u","seed":1}`: true,
		`{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}],"tools":[{"type":"function"}]}`:                                                                                                   true,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`:                                                                                                                   false,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["x"]}`:                                                                                                                               false,
		`{"Model":"m","messages":[{"role":"user","content":"hi"}]}`:                                                                                                                                            false,
		`{"model":"m","model":"n","messages":[]}`:                                                                                                                                                              false,
		`{"model":"m","messages":[{"role":"user","content":"hi"}]} x`:                                                                                                                                          false,
	} {
		var b chatBody
		if got := fastChat([]byte(body), &b); got != want {
			t.Errorf("fastChat took it: %v, want %v: %s", got, want, body)
		}
	}
}

// BenchmarkDecodeChat is decoding a typical chat body: the fast path, and encoding/json.
func BenchmarkDecodeChat(b *testing.B) {
	body := []byte(`{"model":"sim0","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France? Answer in one word."}],"max_tokens":16,"temperature":0}`)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var c chatBody
			if !fastChat(body, &c) {
				b.Fatal("slow path")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var c chatBody
			if err := decodeStrict(body, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzChatAnswerJSON checks that appendChatAnswer writes what encoding/json's Encoder writes.
func FuzzChatAnswerJSON(f *testing.F) {
	f.Add("chatcmpl-0123456789abcdef", "sim0", "hello, world", "stop", "n1", int64(1764633600), 12, 16, 0, false)
	f.Add("x", "m<&>", "a\"b\\c\n\t\r\b\f\x00\x1f\x7f <tag> & \u2028\u2029 é ✓ \xff\xfe", "length", "", int64(-1), -5, 0, 3, true)
	f.Add("", "", "", "", "\xed\xa0\x80 \xf4\x90\x80\x80", int64(0), 0, 0, 0, false)
	f.Fuzz(func(t *testing.T, id, model, content, reason, node string, created int64, prompt, completion, index int, logprobs bool) {
		c := chatChoice{Index: index, Message: scheduler.Message{Role: "assistant", Content: content}, FinishReason: reason}
		if logprobs {
			c.Logprobs = &struct{}{}
		}
		for _, choices := range [][]chatChoice{{c}, {c, c}, {}, nil} {
			a := &chatAnswer{ID: id, Object: "chat.completion", Created: created, Model: model, Choices: choices,
				Usage: usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}, SystemFingerprint: node}
			var want bytes.Buffer
			if err := json.NewEncoder(&want).Encode(a); err != nil {
				t.Fatal(err)
			}
			got := append(appendChatAnswer(nil, a), '\n')
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("appendChatAnswer\n%s\nencoding/json\n%s", got, want.Bytes())
			}
		}
	})
}
