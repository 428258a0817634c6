// Package sse reads server-sent event streams, framed as the WHATWG
// specification says: lines end in \n, \r\n or \r; "data:" lines
// accumulate, joined by \n, until a blank line dispatches the event;
// comments (":") and fields other than data and event are skipped.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Errors of a Reader. Both mean a broken or hostile server.
var (
	// ErrLineTooLong is a line longer than the Reader's bound.
	ErrLineTooLong = errors.New("sse: line too long")
	// ErrEventTooLarge is an event whose data exceeds the Reader's bound.
	ErrEventTooLarge = errors.New("sse: event too large")
)

// Event is one dispatched event.
type Event struct {
	// Name is the event field; empty for the default ("message").
	Name string
	// Data is the event's data lines joined by \n. It is valid until the
	// next call to Next.
	Data []byte
}

// Reader reads events from a stream. It is not safe for concurrent use.
type Reader struct {
	sc   *bufio.Scanner
	max  int
	data []byte
	name string
	has  bool
}

// NewReader reads events from r; max bounds one line and one event's data
// in bytes.
func NewReader(r io.Reader, max int) *Reader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(4096, max)), max)
	sc.Split(scanLines)
	return &Reader{sc: sc, max: max}
}

// Next returns the next event. At the end of the stream it returns an event
// whose blank line never came (a server ending on "data: [DONE]\n" has
// still finished), then io.EOF. Errors of the underlying reader come back
// as they are, wrapped; a line or event over the bound is ErrLineTooLong or
// ErrEventTooLarge.
func (r *Reader) Next() (Event, error) {
	if r.has {
		// The previous event's data is the caller's until this call.
		r.data, r.name, r.has = r.data[:0], "", false
	}
	for r.sc.Scan() {
		line := r.sc.Bytes()
		if len(line) == 0 {
			if r.has {
				return Event{Name: r.name, Data: r.data}, nil
			}
			// An event without data is not dispatched, and its name goes.
			r.name = ""
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if r.has {
				r.data = append(r.data, '\n')
			}
			if len(r.data)+len(value) > r.max {
				return Event{}, fmt.Errorf("%w: event larger than %d bytes", ErrEventTooLarge, r.max)
			}
			r.data = append(r.data, value...)
			r.has = true
		case "event":
			r.name = string(value)
		}
	}
	if err := r.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Event{}, fmt.Errorf("%w: line longer than %d bytes", ErrLineTooLong, r.max)
		}
		return Event{}, fmt.Errorf("read event stream: %w", err)
	}
	if r.has {
		ev := Event{Name: r.name, Data: r.data}
		return ev, nil
	}
	return Event{}, io.EOF
}

// scanLines splits at \n, \r\n or \r, as SSE allows all three.
func scanLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		if i+1 < len(data) {
			if data[i+1] == '\n' {
				return i + 2, data[:i], nil
			}
			return i + 1, data[:i], nil
		}
		if !atEOF {
			// A \r at the end of what has come: wait to see if \n follows.
			return 0, nil, nil
		}
		return i + 1, data[:i], nil
	}
	if atEOF {
		return len(data), data, nil
	}
	return 0, nil, nil
}
