package sse

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
)

type ev struct{ name, data string }

func readAll(r io.Reader, max int) ([]ev, error) {
	rd := NewReader(r, max)
	var out []ev
	for {
		e, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, ev{e.Name, string(e.Data)})
	}
}

func TestFraming(t *testing.T) {
	tests := []struct {
		name, in string
		want     []ev
	}{
		{"events", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []ev{{"", `{"a":1}`}, {"", "[DONE]"}}},
		{"crlf and comments", ": keep-alive\r\ndata: x\r\n\r\nevent: y\r\ndata:z\r\n\r\n", []ev{{"", "x"}, {"y", "z"}}},
		{"lone cr", "data: a\rdata: b\r\rdata: c\r\r", []ev{{"", "a\nb"}, {"", "c"}}},
		{"multi-line data", "data: a\ndata: b\n\n", []ev{{"", "a\nb"}}},
		{"only one space is cut", "data:  two\n\n", []ev{{"", " two"}}},
		{"field without colon", "data\n\n", []ev{{"", ""}}},
		{"unknown fields skipped", "id: 1\nretry: 5\ndata: x\n\n", []ev{{"", "x"}}},
		{"name without data is dropped", "event: ping\n\ndata: x\n\n", []ev{{"", "x"}}},
		{"unterminated last event", "data: tail", []ev{{"", "tail"}}},
		{"blank lines only", "\n\n\r\n", nil},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(strings.NewReader(tt.in), 1<<20)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			got, err = readAll(iotest.OneByteReader(strings.NewReader(tt.in)), 1<<20)
			require.NoError(t, err)
			require.Equal(t, tt.want, got, "one byte at a time")
		})
	}
}

func TestBounds(t *testing.T) {
	_, err := readAll(strings.NewReader("data: "+strings.Repeat("x", 200)+"\n\n"), 100)
	require.ErrorIs(t, err, ErrLineTooLong)
	require.ErrorContains(t, err, "line longer than 100 bytes")
	_, err = readAll(strings.NewReader(strings.Repeat("data: "+strings.Repeat("x", 30)+"\n", 5)+"\n"), 100)
	require.ErrorIs(t, err, ErrEventTooLarge)
	require.ErrorContains(t, err, "event larger than 100 bytes")
}

func TestReaderErrorsPassThrough(t *testing.T) {
	boom := errors.New("connection reset")
	got, err := readAll(io.MultiReader(strings.NewReader("data: a\n\n"), iotest.ErrReader(boom)), 1<<20)
	require.ErrorIs(t, err, boom)
	require.Equal(t, []ev{{"", "a"}}, got)
}

func FuzzReader(f *testing.F) {
	f.Add("data: {\"a\":1}\n\ndata: [DONE]\n\n")
	f.Add(": c\r\ndata:x\r\ndata: y\r\n\r\n")
	f.Add("event: error\rdata: z\r\r")
	f.Add("data")
	f.Fuzz(func(t *testing.T, in string) {
		whole, err := readAll(strings.NewReader(in), 256)
		bytewise, err2 := readAll(iotest.OneByteReader(strings.NewReader(in)), 256)
		require.Equal(t, err == nil, err2 == nil, "%v / %v", err, err2)
		if err != nil {
			return
		}
		require.Equal(t, whole, bytewise, "framing must not depend on how reads split the stream")
		require.LessOrEqual(t, len(whole), strings.Count(in, "data")+1)
		for _, e := range whole {
			require.LessOrEqual(t, len(e.data), len(in))
		}
	})
}
