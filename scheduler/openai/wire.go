package openai

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/shoal-dev/shoal/scheduler"
)

// wireParams are the generation parameters as the upstream takes them. Two
// requests whose wireParams encode the same may share one upstream call.
type wireParams struct {
	// MaxTokens 0 leaves the upstream's default.
	MaxTokens int `json:"max_tokens,omitempty"`
	// Temperature is always sent: OpenAI's default is 1, ours is 0 (greedy).
	Temperature float64  `json:"temperature"`
	TopP        float64  `json:"top_p,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	Stop        []string `json:"stop,omitempty"`
}

func toWire(p scheduler.Params) wireParams {
	w := wireParams{MaxTokens: max(p.MaxTokens, 0), Temperature: p.Temperature, Seed: p.Seed, Stop: p.Stop}
	// TopP 0 and 1 both mean "off" to us; 1 is the upstream's default.
	if p.TopP > 0 && p.TopP < 1 {
		w.TopP = p.TopP
	}
	return w
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// completionRequest is the body of POST {URL}/completions.
type completionRequest struct {
	Model string `json:"model"`
	// Prompt is a string for one prompt, a []string for a group: a plain
	// string is what every server accepts.
	Prompt any `json:"prompt"`
	wireParams
	Stream        bool           `json:"stream,omitempty"`
	StreamOptions *streamOptions `json:"stream_options,omitempty"`
}

// chatRequest is the body of POST {URL}/chat/completions.
type chatRequest struct {
	Model    string              `json:"model"`
	Messages []scheduler.Message `json:"messages"`
	wireParams
	Stream        bool           `json:"stream,omitempty"`
	StreamOptions *streamOptions `json:"stream_options,omitempty"`
}

// usage is the upstream's token accounting.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// known reports whether the upstream counted anything; some servers send
// an all-zero usage object rather than none.
func (u *usage) known() bool {
	return u != nil && (u.PromptTokens > 0 || u.CompletionTokens > 0)
}

type content struct {
	Content *string `json:"content"`
}

// choice is one element of "choices" in a completion, chat completion or
// stream chunk. Its text is in Text (completions), Message (chat) or Delta
// (chat stream); servers mix these up, so all are read for every endpoint.
type choice struct {
	Index        int      `json:"index"`
	Text         string   `json:"text"`
	Message      *content `json:"message"`
	Delta        *content `json:"delta"`
	FinishReason *string  `json:"finish_reason"`
}

func (c *choice) text() string {
	switch {
	case c.Delta != nil && c.Delta.Content != nil:
		return *c.Delta.Content
	case c.Message != nil && c.Message.Content != nil:
		return *c.Message.Content
	}
	return c.Text
}

// response is a non-streamed answer or one stream chunk.
type response struct {
	Choices []choice        `json:"choices"`
	Usage   *usage          `json:"usage"`
	Error   json.RawMessage `json:"error"`
}

// hasError reports an error object in a 200 body or stream chunk.
func (r *response) hasError() bool {
	return len(r.Error) > 0 && string(r.Error) != "null"
}

// answer is the text produced for one prompt.
type answer struct {
	Text         string
	FinishReason string
}

// decodeChoices decodes a non-streamed answer to n prompts. Choices are
// mapped to prompts by their index, not their position, since servers may
// answer out of order; every prompt must get exactly one choice.
func decodeChoices(body []byte, n int) ([]answer, *usage, error) {
	if out, u, ok := fastChoices(body, n); ok {
		return out, u, nil
	}
	return slowChoices(body, n)
}

// slowChoices is decodeChoices through encoding/json: every answer
// fastChoices does not take, and every error.
func slowChoices(body []byte, n int) ([]answer, *usage, error) {
	var r response
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, nil, fmt.Errorf("%w: decode JSON: %v", ErrBadResponse, err)
	}
	if r.hasError() {
		return nil, nil, decodeError(0, body)
	}
	out := make([]answer, n)
	seen := make([]bool, n)
	for i := range r.Choices {
		c := &r.Choices[i]
		switch {
		case c.Index < 0 || c.Index >= n:
			return nil, nil, fmt.Errorf("%w: choice index %d outside 0..%d", ErrBadResponse, c.Index, n-1)
		case seen[c.Index]:
			return nil, nil, fmt.Errorf("%w: two choices with index %d", ErrBadResponse, c.Index)
		}
		seen[c.Index] = true
		out[c.Index] = answer{Text: c.text(), FinishReason: finishReason(c.FinishReason)}
	}
	if i := slices.Index(seen, false); i >= 0 {
		return nil, nil, fmt.Errorf("%w: no choice for prompt %d of %d", ErrBadResponse, i, n)
	}
	return out, r.Usage, nil
}

// finishReason maps the upstream's reason onto the two our Result
// promises: "length" when the token limit cut the text, else "stop".
func finishReason(s *string) string {
	if s != nil && (*s == "length" || *s == "max_tokens") {
		return "length"
	}
	return "stop"
}

// countWords stands in for a token count when the upstream reports no
// usage. It is the same measure the sim backend uses; for English text it
// undercounts BPE tokens by roughly a quarter, which is close enough for
// metrics and token rate limits, and never invents usage from nothing.
func countWords(s string) int { return len(strings.Fields(s)) }

// apportion splits total into integer shares proportional to weights that
// add up to exactly total (largest remainder), so per-task usage of a
// grouped call sums to what the upstream reported. All-zero weights share
// evenly.
func apportion(total int, weights []int) []int {
	out := make([]int, len(weights))
	if len(weights) == 0 || total <= 0 {
		return out
	}
	var sum int64
	for _, w := range weights {
		sum += int64(max(w, 0))
	}
	weight := func(i int) int64 {
		if sum == 0 {
			return 1
		}
		return int64(max(weights[i], 0))
	}
	if sum == 0 {
		sum = int64(len(weights))
	}
	type remainder struct {
		i int
		r int64
	}
	rems := make([]remainder, len(weights))
	given := 0
	for i := range weights {
		share := int64(total) * weight(i)
		out[i] = int(share / sum)
		rems[i] = remainder{i, share % sum}
		given += out[i]
	}
	slices.SortStableFunc(rems, func(a, b remainder) int {
		switch {
		case a.r > b.r:
			return -1
		case a.r < b.r:
			return 1
		}
		return 0
	})
	for k := 0; given < total; k++ {
		out[rems[k%len(rems)].i]++
		given++
	}
	return out
}

// boundedReader fails with ErrBadResponse once more than limit bytes have
// come, so a broken upstream cannot make us buffer without end.
type boundedReader struct {
	r     io.Reader
	left  int64
	limit int64
}

func newBoundedReader(r io.Reader, limit int64) *boundedReader {
	return &boundedReader{r: r, left: limit, limit: limit}
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// At the bound: only a clean end is acceptable.
		var probe [1]byte
		n, err := b.r.Read(probe[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: body larger than %d bytes", ErrBadResponse, b.limit)
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// activityReader calls touch whenever bytes arrive; a stream's idle timer
// is reset by any traffic, keep-alive comments included.
type activityReader struct {
	r     io.Reader
	touch func()
}

func (a *activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.touch()
	}
	return n, err
}
