package openai

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// streamResult is what a complete event stream produced.
type streamResult struct {
	Text         string
	FinishReason string
	// Usage is the upstream's count (from stream_options.include_usage),
	// nil when it sent none.
	Usage *usage
}

// maxEvent bounds one event's data; chunks carry a token or a few, so
// anything near this is a broken upstream.
const maxEvent = 1 << 20

// readStream parses an OpenAI server-sent event stream, calling emit with
// each chunk's text as soon as its event is complete, and returns once the
// stream sends [DONE].
//
// Framing follows the SSE spec: lines end in \n, \r\n or \r; "data:" lines
// accumulate until a blank line dispatches the event; comments (":") and
// other fields are skipped. An "error" event or a chunk with an "error"
// object gives an *UpstreamError. Malformed JSON, an oversized event, or an
// end before [DONE] gives ErrBadResponse. Errors from r come back wrapped
// as they are, for the caller to classify.
func readStream(r io.Reader, emit func(string)) (streamResult, error) {
	var (
		res       streamResult
		text      strings.Builder
		data      []byte
		hasData   bool
		eventName string
	)
	finished := func() streamResult {
		res.Text = text.String()
		if res.FinishReason == "" {
			res.FinishReason = "stop"
		}
		return res
	}
	dispatch := func() (done bool, err error) {
		defer func() { data, hasData, eventName = data[:0], false, "" }()
		if string(data) == "[DONE]" {
			return true, nil
		}
		var chunk response
		if err := json.Unmarshal(data, &chunk); err != nil {
			if eventName == "error" {
				return false, decodeError(0, data)
			}
			return false, fmt.Errorf("%w: decode event %q: %v", ErrBadResponse, clip(string(data), 120), err)
		}
		if eventName == "error" || chunk.hasError() {
			return false, decodeError(0, data)
		}
		for i := range chunk.Choices {
			c := &chunk.Choices[i]
			// We send n=1 and one prompt per stream, so only index 0 is ours.
			if c.Index != 0 {
				continue
			}
			if t := c.text(); t != "" {
				text.WriteString(t)
				emit(t)
			}
			if c.FinishReason != nil && *c.FinishReason != "" {
				res.FinishReason = finishReason(c.FinishReason)
			}
		}
		if chunk.Usage != nil {
			res.Usage = chunk.Usage
		}
		return false, nil
	}

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxEvent)
	sc.Split(scanLines)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if !hasData {
				continue
			}
			done, err := dispatch()
			if err != nil {
				return streamResult{}, err
			}
			if done {
				return finished(), nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			if len(data)+len(value) > maxEvent {
				return streamResult{}, fmt.Errorf("%w: event larger than %d bytes", ErrBadResponse, maxEvent)
			}
			data = append(data, value...)
			hasData = true
		case "event":
			eventName = string(value)
		}
	}
	err := sc.Err()
	switch {
	case errors.Is(err, bufio.ErrTooLong):
		return streamResult{}, fmt.Errorf("%w: line longer than %d bytes", ErrBadResponse, maxEvent)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return streamResult{}, fmt.Errorf("%w: stream cut off: %w", ErrBadResponse, err)
	case err != nil:
		return streamResult{}, fmt.Errorf("read stream: %w", err)
	}
	if hasData {
		// The spec drops an event without its blank line, but a server that
		// ends on "data: [DONE]\n" has still finished properly.
		done, err := dispatch()
		if err != nil {
			return streamResult{}, err
		}
		if done {
			return finished(), nil
		}
	}
	return streamResult{}, fmt.Errorf("%w: stream ended before [DONE]", ErrBadResponse)
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
