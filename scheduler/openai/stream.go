package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	ssefmt "github.com/shoal-dev/shoal/internal/sse"
	"github.com/shoal-dev/shoal/scheduler/internal/upcall"
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
// Framing is package sse's (the SSE spec). An "error" event or a chunk with an "error"
// object gives an *UpstreamError. Malformed JSON, an oversized event, or an
// end before [DONE] gives ErrBadResponse. Errors from r come back wrapped
// as they are, for the caller to classify.
func readStream(r io.Reader, emit func(string)) (streamResult, error) {
	var (
		res  streamResult
		text strings.Builder
	)
	finished := func() streamResult {
		res.Text = text.String()
		if res.FinishReason == "" {
			res.FinishReason = "stop"
		}
		return res
	}
	dispatch := func(ev ssefmt.Event) (done bool, err error) {
		data := ev.Data
		if string(data) == "[DONE]" {
			return true, nil
		}
		var chunk response
		if err := json.Unmarshal(data, &chunk); err != nil {
			if ev.Name == "error" {
				return false, decodeError(0, data)
			}
			return false, fmt.Errorf("%w: decode event %q: %v", ErrBadResponse, upcall.Clip(string(data), 120), err)
		}
		if ev.Name == "error" || chunk.hasError() {
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

	rd := ssefmt.NewReader(r, maxEvent)
	for {
		ev, err := rd.Next()
		switch {
		case errors.Is(err, io.EOF):
			return streamResult{}, fmt.Errorf("%w: stream ended before [DONE]", ErrBadResponse)
		case errors.Is(err, ssefmt.ErrLineTooLong), errors.Is(err, ssefmt.ErrEventTooLarge):
			return streamResult{}, fmt.Errorf("%w: %w", ErrBadResponse, err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return streamResult{}, fmt.Errorf("%w: stream cut off: %w", ErrBadResponse, err)
		case err != nil:
			return streamResult{}, err
		}
		done, err := dispatch(ev)
		if err != nil {
			return streamResult{}, err
		}
		if done {
			return finished(), nil
		}
	}
}
