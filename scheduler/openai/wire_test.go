package openai

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestReadStreamFraming(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		chunks []string
		res    streamResult
	}{
		{"LF", "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"index\":0,\"text\":\"b\",\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
			[]string{"a", "b"}, streamResult{Text: "ab", FinishReason: "length"}},
		{"CRLF and comments", ": keep-alive\r\n\r\nevent: message\r\nid: 1\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n",
			[]string{"hi"}, streamResult{Text: "hi", FinishReason: "stop"}},
		{"CR only", "data: {\"choices\":[{\"index\":0,\"text\":\"x\"}]}\r\rdata: [DONE]\r\r",
			[]string{"x"}, streamResult{Text: "x", FinishReason: "stop"}},
		{"no space after colon", "data:{\"choices\":[{\"index\":0,\"text\":\"y\"}]}\n\ndata:[DONE]\n\n",
			[]string{"y"}, streamResult{Text: "y", FinishReason: "stop"}},
		{"multi-line data joins", "data: {\"choices\":\ndata: [{\"index\":0,\"text\":\"z\"}]}\n\ndata: [DONE]\n\n",
			[]string{"z"}, streamResult{Text: "z", FinishReason: "stop"}},
		{"usage chunk", "data: {\"choices\":[{\"index\":0,\"text\":\"u\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
			[]string{"u"}, streamResult{Text: "u", FinishReason: "stop", Usage: &usage{PromptTokens: 5, CompletionTokens: 1}}},
		{"other indices ignored", "data: {\"choices\":[{\"index\":1,\"text\":\"no\"},{\"index\":0,\"text\":\"yes\"}]}\n\ndata: [DONE]\n\n",
			[]string{"yes"}, streamResult{Text: "yes", FinishReason: "stop"}},
		{"DONE without blank line at EOF", "data: {\"choices\":[{\"index\":0,\"text\":\"e\"}]}\n\ndata: [DONE]",
			[]string{"e"}, streamResult{Text: "e", FinishReason: "stop"}},
		{"role-only and null content", "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\ndata: [DONE]\n\n",
			nil, streamResult{Text: "", FinishReason: "stop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			// One byte per read, so every event straddles reads.
			res, err := readStream(iotest.OneByteReader(strings.NewReader(tc.in)), func(s string) { got = append(got, s) })
			require.NoError(t, err)
			require.Equal(t, tc.chunks, got)
			require.Equal(t, tc.res, res)
		})
	}
}

func TestReadStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		upstream *UpstreamError
		bad      string
	}{
		{"empty", "", nil, "ended before [DONE]"},
		{"bad JSON", "data: {nope\n\n", nil, "decode event"},
		{"error object", `data: {"error":{"message":"m","type":"t","code":400}}` + "\n\n", &UpstreamError{Status: 400, Message: "m", Type: "t"}, ""},
		{"error string (TGI)", `data: {"error":"overloaded","error_type":"generation"}` + "\n\n", &UpstreamError{Status: 500, Message: "overloaded", Type: "generation"}, ""},
		{"error event with text", "event: error\ndata: model crashed\n\n", &UpstreamError{Status: 500, Message: "model crashed"}, ""},
		{"error event with JSON", "event: error\ndata: {\"message\":\"busy\",\"code\":\"503\"}\n\n", &UpstreamError{Status: 503, Message: "busy"}, ""},
		{"line too long", "data: " + strings.Repeat("x", maxEvent+10) + "\n\n", nil, "longer than"},
		{"event too large", strings.Repeat("data: "+strings.Repeat("x", 1000)+"\n", maxEvent/1000+2) + "\n", nil, "event larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readStream(strings.NewReader(tc.in), func(string) {})
			if tc.upstream != nil {
				var ue *UpstreamError
				require.ErrorAs(t, err, &ue)
				require.Equal(t, tc.upstream, ue)
				return
			}
			require.ErrorIs(t, err, ErrBadResponse)
			require.ErrorContains(t, err, tc.bad)
		})
	}
}

func TestReadStreamPassesReaderErrorsThrough(t *testing.T) {
	boom := errors.New("connection reset")
	_, err := readStream(io.MultiReader(strings.NewReader("data: {\"choices\":[]}\n\n"), iotest.ErrReader(boom)), func(string) {})
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrBadResponse, "the caller classifies transport errors")
}

func TestDecodeErrorShapes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   UpstreamError
	}{
		{"openai", 400, `{"error":{"message":"bad max_tokens","type":"invalid_request_error","param":"max_tokens","code":null}}`, UpstreamError{Status: 400, Message: "bad max_tokens", Type: "invalid_request_error"}},
		{"vllm top level", 400, `{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}`, UpstreamError{Status: 400, Message: "too long", Type: "BadRequestError"}},
		{"tgi", 422, `{"error":"Input validation error","error_type":"validation"}`, UpstreamError{Status: 422, Message: "Input validation error", Type: "validation"}},
		{"llama.cpp", 503, `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`, UpstreamError{Status: 503, Message: "Loading model", Type: "unavailable_error"}},
		{"plain text", 502, "Bad Gateway\n", UpstreamError{Status: 502, Message: "Bad Gateway", Type: ""}},
		{"empty", 429, "", UpstreamError{Status: 429, Message: "Too Many Requests", Type: ""}},
		{"status from code", 0, `{"error":{"message":"m","code":429}}`, UpstreamError{Status: 429, Message: "m", Type: ""}},
		{"code not a status", 0, `{"error":{"message":"m","code":"context_length_exceeded"}}`, UpstreamError{Status: 500, Message: "m", Type: ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, &tc.want, decodeError(tc.status, []byte(tc.body)))
		})
	}
}

func TestDecodeErrorBoundsTheMessage(t *testing.T) {
	body := strings.Repeat("é", 2000) + "\xff"
	e := decodeError(500, []byte(body))
	require.LessOrEqual(t, len(e.Message), maxErrorMessage)
	require.True(t, utf8.ValidString(e.Message))
}

// A body of stray UTF-8 continuation bytes longer than the bound still
// leaves a message (found by FuzzParseStream: the cut backed off to nothing).
func TestDecodeErrorKeepsAMessageOfStrayBytes(t *testing.T) {
	e := decodeError(502, bytes.Repeat([]byte{0xaa}, 2*maxErrorMessage))
	require.NotEmpty(t, e.Message)
	require.True(t, utf8.ValidString(e.Message))
	require.LessOrEqual(t, len(e.Message), 3*maxErrorMessage)
}

func TestIsBackendFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("other"), false},
		{ErrUnavailable, true},
		{ErrBadResponse, true},
		{&UpstreamError{Status: 400}, false},
		{&UpstreamError{Status: 429}, false},
		{&UpstreamError{Status: 500}, true},
		{&UpstreamError{Status: 504}, true},
	} {
		require.Equal(t, tc.want, IsBackendFailure(tc.err), "%v", tc.err)
	}
}

func TestApportionAddsUpExactly(t *testing.T) {
	for _, tc := range []struct {
		total   int
		weights []int
		want    []int
	}{
		{10, []int{1, 1}, []int{5, 5}},
		{10, []int{1, 2, 2}, []int{2, 4, 4}},
		{7, []int{1, 1, 1}, []int{3, 2, 2}},
		{5, []int{0, 0}, []int{3, 2}},
		{0, []int{3, 4}, []int{0, 0}},
		{3, []int{10, 0, 0}, []int{3, 0, 0}},
		{100, []int{1, 1000000}, []int{0, 100}},
		{4, nil, []int{}},
	} {
		got := apportion(tc.total, tc.weights)
		require.Equal(t, tc.want, got, "apportion(%d, %v)", tc.total, tc.weights)
	}
}

func TestBoundedReader(t *testing.T) {
	got, err := io.ReadAll(newBoundedReader(strings.NewReader("12345"), 5))
	require.NoError(t, err, "exactly the bound is fine")
	require.Equal(t, "12345", string(got))
	_, err = io.ReadAll(newBoundedReader(strings.NewReader("123456"), 5))
	require.ErrorIs(t, err, ErrBadResponse)
}

// FuzzParseStream feeds arbitrary bytes to the SSE parser and the JSON
// answer decoders: they must never panic, and what they accept must be
// consistent (the emitted chunks add up to the text; one answer per prompt;
// errors are of the documented kinds).
func FuzzParseStream(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\ndata: [DONE]\n\n"), uint8(1))
	f.Add([]byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":1}}\r\n\r\ndata: [DONE]\r\n\r\n"), uint8(1))
	f.Add([]byte("event: error\ndata: {\"error\":{\"message\":\"x\",\"code\":400}}\n\n"), uint8(1))
	f.Add([]byte(": ping\n\ndata: {\"choices\":\ndata: []}\n\ndata: [DONE]"), uint8(2))
	f.Add([]byte(`{"choices":[{"index":1,"text":"b"},{"index":0,"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}`), uint8(2))
	f.Add([]byte(`{"choices":[{"index":0,"message":{"content":null},"finish_reason":"stop"}]}`), uint8(1))
	f.Add([]byte(`{"error":"boom","error_type":"x"}`), uint8(0))
	f.Add([]byte("data: {\"choices\":[{\"index\":0,\"text\":\"\xff\"}]}\r"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		var emitted strings.Builder
		res, err := readStream(bytes.NewReader(data), func(s string) { emitted.WriteString(s) })
		if err == nil {
			require.Equal(t, emitted.String(), res.Text)
			require.Contains(t, []string{"stop", "length"}, res.FinishReason)
		} else {
			requireProtocolError(t, err)
		}

		prompts := int(n)%70 + 1
		answers, _, err := decodeChoices(data, prompts)
		if err == nil {
			require.Len(t, answers, prompts)
		} else {
			requireProtocolError(t, err)
		}

		status := http.StatusBadRequest + int(n)%200
		e := decodeError(status, data)
		require.Equal(t, status, e.Status)
		require.NotEmpty(t, e.Message)
		require.True(t, utf8.ValidString(e.Message))
		require.LessOrEqual(t, len(e.Message), 3*maxErrorMessage)
		inStream := decodeError(0, data)
		require.GreaterOrEqual(t, inStream.Status, 400)
		require.LessOrEqual(t, inStream.Status, 599)
	})
}

func requireProtocolError(t *testing.T, err error) {
	t.Helper()
	var ue *UpstreamError
	if errors.As(err, &ue) {
		require.GreaterOrEqual(t, ue.Status, 400)
		return
	}
	require.ErrorIs(t, err, ErrBadResponse)
}
