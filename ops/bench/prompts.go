package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
)

// Message is one chat message of a prompt.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Prompt is one request's input: a plain prompt or a chat conversation. The
// other endpoint's shape is derived from whichever is set.
type Prompt struct {
	Prompt   string    `json:"prompt,omitempty"`
	Messages []Message `json:"messages,omitempty"`
}

// text is the prompt as one string (chat messages joined by newlines).
func (p Prompt) text() string {
	if len(p.Messages) == 0 {
		return p.Prompt
	}
	parts := make([]string, len(p.Messages))
	for i, m := range p.Messages {
		parts[i] = m.Content
	}
	return strings.Join(parts, "\n")
}

// messages is the prompt as a chat conversation.
func (p Prompt) messages() []Message {
	if len(p.Messages) > 0 {
		return p.Messages
	}
	return []Message{{Role: "user", Content: p.Prompt}}
}

// maxPromptLine bounds one JSONL line so a corrupt file cannot exhaust memory.
const maxPromptLine = 4 << 20

// ReadPrompts parses JSONL: one {"prompt": "..."} or {"messages": [...]}
// object per line; blank lines and lines starting with # are skipped.
// Errors name the line.
func ReadPrompts(r io.Reader) ([]Prompt, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxPromptLine)
	var out []Prompt
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		var p Prompt
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrBadPrompts, line, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("%w: line %d: more than one JSON value", ErrBadPrompts, line)
		}
		switch {
		case p.Prompt != "" && len(p.Messages) > 0:
			return nil, fmt.Errorf("%w: line %d: set either prompt or messages, not both", ErrBadPrompts, line)
		case p.Prompt == "" && len(p.Messages) == 0:
			return nil, fmt.Errorf("%w: line %d: needs a non-empty prompt or messages", ErrBadPrompts, line)
		}
		for i, m := range p.Messages {
			if m.Role == "" {
				return nil, fmt.Errorf("%w: line %d: messages[%d] has no role", ErrBadPrompts, line, i)
			}
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: after line %d: %v", ErrBadPrompts, line, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no prompts", ErrBadPrompts)
	}
	return out, nil
}

// picker hands out prompts: fresh ones in order, or with probability
// repeat one already sent, so the cache sees a known share of repeats.
type picker struct {
	mu      sync.Mutex
	rng     *rand.Rand
	file    []Prompt
	nonce   string
	repeat  float64
	fresh   int
	sentIdx []int
}

func newPicker(file []Prompt, repeat float64, seed uint64) *picker {
	return &picker{
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		file:   file,
		repeat: repeat,
		// The nonce keeps generated prompts of separate runs apart, so a
		// second run (tune's next step) is not answered from the cache.
		nonce: strconv.FormatUint(seed, 36),
	}
}

// next returns the next prompt and whether it repeats an earlier one.
func (p *picker) next() (Prompt, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.sentIdx) > 0 && p.repeat > 0 && p.rng.Float64() < p.repeat {
		return p.at(p.sentIdx[p.rng.IntN(len(p.sentIdx))]), true
	}
	i := p.fresh
	p.fresh++
	p.sentIdx = append(p.sentIdx, i)
	return p.at(i), false
}

func (p *picker) at(i int) Prompt {
	if len(p.file) > 0 {
		return p.file[i%len(p.file)]
	}
	topic := topics[i%len(topics)]
	return Prompt{Prompt: fmt.Sprintf("Request %d of run %s: in a few words, explain %s.", i, p.nonce, topic)}
}

var topics = []string{
	"how a shoal of fish turns together",
	"why batching makes inference cheaper",
	"what a response cache saves",
	"how gossip spreads news between peers",
	"why a raft cluster needs a quorum",
	"what tail latency means for users",
	"how a queue smooths bursts of load",
	"why tokens stream one at a time",
}
