package bench

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPickerRepeatRatio(t *testing.T) {
	for _, ratio := range []float64{0, 0.3, 0.8} {
		p := newPicker(nil, ratio, 42)
		repeats := 0
		seen := map[string]bool{}
		for range 2000 {
			pr, rep := p.next()
			if rep {
				repeats++
				require.True(t, seen[pr.Prompt], "a repeat is a prompt sent before")
			} else {
				require.False(t, seen[pr.Prompt], "a fresh prompt is new")
			}
			seen[pr.Prompt] = true
		}
		require.InDelta(t, ratio*2000, float64(repeats), 2000*0.05, "ratio %.1f", ratio)
	}
}

func TestPickerSeparatesRuns(t *testing.T) {
	a, _ := newPicker(nil, 0, 1).next()
	b, _ := newPicker(nil, 0, 2).next()
	require.NotEqual(t, a.Prompt, b.Prompt, "generated prompts of two runs never hit each other's cache entries")
}

func TestPickerCyclesFilePrompts(t *testing.T) {
	p := newPicker([]Prompt{{Prompt: "a"}, {Prompt: "b"}}, 0, 1)
	var got []string
	for range 5 {
		pr, _ := p.next()
		got = append(got, pr.Prompt)
	}
	require.Equal(t, []string{"a", "b", "a", "b", "a"}, got)
}

func TestReadPrompts(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Prompt
		err      string
	}{
		{name: "prompt and messages", in: "{\"prompt\":\"hi\"}\n\n# comment\n{\"messages\":[{\"role\":\"user\",\"content\":\"yo\"}]}\r\n",
			want: []Prompt{{Prompt: "hi"}, {Messages: []Message{{Role: "user", Content: "yo"}}}}},
		{name: "no trailing newline", in: `{"prompt":"x"}`, want: []Prompt{{Prompt: "x"}}},
		{name: "empty file", in: "\n\n", err: "no prompts"},
		{name: "bad json", in: "{\"prompt\":\"ok\"}\n{nope}\n", err: "line 2"},
		{name: "unknown field", in: `{"promt":"typo"}`, err: "unknown field"},
		{name: "both set", in: `{"prompt":"a","messages":[{"role":"user","content":"b"}]}`, err: "not both"},
		{name: "neither set", in: `{"prompt":""}`, err: "non-empty"},
		{name: "missing role", in: `{"messages":[{"content":"b"}]}`, err: "no role"},
		{name: "two values", in: `{"prompt":"a"} {"prompt":"b"}`, err: "more than one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadPrompts(strings.NewReader(tt.in))
			if tt.err != "" {
				require.ErrorIs(t, err, ErrBadPrompts)
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func FuzzReadPrompts(f *testing.F) {
	f.Add("{\"prompt\":\"hi\"}\n")
	f.Add("{\"messages\":[{\"role\":\"user\",\"content\":\"yo\"}]}\n# c\n\n")
	f.Add("{\"prompt\":1}")
	f.Fuzz(func(t *testing.T, in string) {
		ps, err := ReadPrompts(strings.NewReader(in))
		if err != nil {
			require.ErrorIs(t, err, ErrBadPrompts)
			return
		}
		require.NotEmpty(t, ps)
		for _, p := range ps {
			require.True(t, (p.Prompt != "") != (len(p.Messages) > 0))
		}
	})
}

func collectSSE(t *testing.T, in string) ([]string, error) {
	t.Helper()
	var got []string
	err := readSSE(strings.NewReader(in), func(d []byte) (bool, error) {
		got = append(got, string(d))
		return string(d) == "[DONE]", nil
	})
	return got, err
}

func TestReadSSE(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"events", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []string{`{"a":1}`, "[DONE]"}},
		{"crlf and comments", ": keep-alive\r\ndata: x\r\n\r\nevent: y\r\ndata:z\r\n\r\n", []string{"x", "z"}},
		{"multi-line data", "data: a\ndata: b\n\n", []string{"a\nb"}},
		{"stops at done", "data: [DONE]\n\ndata: after\n\n", []string{"[DONE]"}},
		{"unterminated last event", "data: tail", []string{"tail"}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := collectSSE(t, tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestReadSSELongLine(t *testing.T) {
	long := strings.Repeat("x", 100_000)
	got, err := collectSSE(t, "data: "+long+"\n\n")
	require.NoError(t, err)
	require.Equal(t, []string{long}, got)
	_, err = collectSSE(t, "data: "+strings.Repeat("y", maxSSELine+100)+"\n\n")
	require.ErrorContains(t, err, "longer than")
}

func TestReadSSEPassesCallbackError(t *testing.T) {
	boom := errors.New("boom")
	err := readSSE(strings.NewReader("data: a\n\n"), func([]byte) (bool, error) { return true, boom })
	require.ErrorIs(t, err, boom)
}

func FuzzReadSSE(f *testing.F) {
	f.Add("data: {\"a\":1}\n\ndata: [DONE]\n\n")
	f.Add(": c\r\ndata:x\r\ndata: y\r\n\r\n")
	f.Add("data")
	f.Fuzz(func(t *testing.T, in string) {
		n := 0
		err := readSSE(strings.NewReader(in), func(d []byte) (bool, error) {
			n++
			require.LessOrEqual(t, len(d), len(in))
			return false, nil
		})
		require.NoError(t, err)
		require.LessOrEqual(t, n, strings.Count(in, "data")+1)
	})
}

func TestAggregateCountsCacheHeaders(t *testing.T) {
	a := newAggregate(time.Second)
	a.start = time.Now()
	for _, c := range []string{"hit", "hit", "hit", "miss", "bypass", ""} {
		at := time.Now()
		a.add(&result{scheduled: at, sent: at, end: at.Add(time.Millisecond), status: 200, cache: c, node: "n1"})
	}
	r := a.report(Config{URL: "http://x", Concurrency: 1, RepeatRatio: 0.5})
	require.Equal(t, CacheStats{Hits: 3, Misses: 1, Bypass: 1, HitRatio: 0.75, Seen: true}, r.Cache)
	require.Equal(t, StatusPass, r.SLO[3].Status)
	unique := a.report(Config{URL: "http://x", Concurrency: 1})
	require.Equal(t, StatusSkip, unique.SLO[3].Status, "unique generated prompts cannot hit the cache")
	fromFile := a.report(Config{URL: "http://x", Concurrency: 1, Prompts: []Prompt{{Prompt: "p"}}})
	require.Equal(t, StatusPass, fromFile.SLO[3].Status, "a prompts file may repeat itself")
}

func TestAggregateMeasuresFromScheduledTime(t *testing.T) {
	// An open-loop request that left 300ms late and took 10ms once sent
	// waited 310ms as far as its user is concerned.
	a := newAggregate(time.Second)
	a.start = time.Now()
	at := a.start
	a.add(&result{scheduled: at, sent: at.Add(300 * time.Millisecond), end: at.Add(310 * time.Millisecond), status: 200})
	r := a.report(Config{URL: "http://x", Rate: 10})
	require.InDelta(t, 310, r.Latency.Max, 1)
	require.InDelta(t, 300, r.MaxSendLagMs, 1)
}

func TestCheckSLO(t *testing.T) {
	s := DefaultSLO()
	tests := []struct {
		name                string
		p95, p99, errs, hit float64
		want                []Status
	}{
		{"all pass", 100, 200, 0, 0.9, []Status{StatusPass, StatusPass, StatusPass, StatusPass}},
		{"warn band", 450, 800, 0.01, 0.4, []Status{StatusWarn, StatusWarn, StatusWarn, StatusWarn}},
		{"critical", 600, 1000, 0.02, 0.3, []Status{StatusFail, StatusFail, StatusFail, StatusFail}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Report{Requests: 100, OK: 100, ErrorRate: tt.errs, Latency: Percentiles{P95: tt.p95, P99: tt.p99}, Prompts: "file",
				Cache: CacheStats{Hits: 1, Misses: 1, HitRatio: tt.hit, Seen: true}}
			rows := CheckSLO(r, s)
			got := make([]Status, len(rows))
			for i, row := range rows {
				got[i] = row.Status
			}
			require.Equal(t, tt.want, got)
		})
	}
	require.Equal(t, StatusSkip, CheckSLO(Report{Requests: 1, OK: 1}, s)[3].Status, "no cache header, no verdict")
}

func TestWorst(t *testing.T) {
	require.Equal(t, StatusPass, Worst([]SLOResult{{Status: StatusPass}, {Status: StatusSkip}}))
	require.Equal(t, StatusWarn, Worst([]SLOResult{{Status: StatusWarn}, {Status: StatusPass}}))
	require.Equal(t, StatusFail, Worst([]SLOResult{{Status: StatusWarn}, {Status: StatusFail}}))
}

func TestBodyShapes(t *testing.T) {
	p := Prompt{Messages: []Message{{Role: "system", Content: "a"}, {Role: "user", Content: "b"}}}
	chat, err := body(EndpointChat, "m", p, 5, true)
	require.NoError(t, err)
	require.JSONEq(t, `{"model":"m","messages":[{"role":"system","content":"a"},{"role":"user","content":"b"}],"max_tokens":5,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`, string(chat))
	infer, err := body(EndpointInfer, "m", p, 5, false)
	require.NoError(t, err)
	require.JSONEq(t, `{"model":"m","input":"a\nb","stream":false,"parameters":{"max_tokens":5,"temperature":0}}`, string(infer))
	comp, err := body(EndpointCompletions, "m", Prompt{Prompt: "x"}, 1, false)
	require.NoError(t, err)
	require.True(t, bytes.Contains(comp, []byte(`"prompt":"x"`)))
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]Endpoint{"chat": EndpointChat, "Completions": EndpointCompletions, "/v1/infer": EndpointInfer} {
		got, err := ParseEndpoint(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := ParseEndpoint("embeddings")
	require.ErrorIs(t, err, ErrBadEndpoint)
}

// BenchmarkAggregateAdd is the per-response cost of recording a result,
// paid under a lock by every worker.
func BenchmarkAggregateAdd(b *testing.B) {
	a := newAggregate(30 * time.Second)
	a.start = time.Now()
	at := a.start
	r := &result{scheduled: at, sent: at, end: at.Add(42 * time.Millisecond), status: 200, cache: "miss", node: "n1",
		ttft: 5 * time.Millisecond, itl: []time.Duration{time.Millisecond, 2 * time.Millisecond}, outTokens: 3}
	b.ReportAllocs()
	for b.Loop() {
		a.add(r)
	}
}

// BenchmarkReadSSE parses a 64-token chat stream.
func BenchmarkReadSSE(b *testing.B) {
	var sb strings.Builder
	for range 64 {
		sb.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" word"}}]}` + "\n\n")
	}
	sb.WriteString("data: [DONE]\n\n")
	stream := sb.String()
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		_ = readSSE(strings.NewReader(stream), func([]byte) (bool, error) { return false, nil })
	}
}

// BenchmarkBody is the load generator's cost of building one request body.
func BenchmarkBody(b *testing.B) {
	p := Prompt{Prompt: "a generated prompt of ordinary length, unique per request 000123"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := body(EndpointChat, "m", p, 16, false); err != nil {
			b.Fatal(err)
		}
	}
}
