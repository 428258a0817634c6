package openai

import (
	"encoding/json"

	"github.com/shoal-dev/shoal/internal/jsonwalk"
)

// fastChoices is decodeChoices without reflection, for the answers every
// server sends: it reads only choices[].index, text, message.content,
// delta.content, finish_reason and usage's two counts, and skips the rest.
// It gives up (ok false) on anything it does not handle exactly as
// encoding/json would: invalid JSON, a type that does not fit, a key that
// only matches case-insensitively or twice, an "error" object, a choice
// the slow path rejects. decodeChoices then decodes the body the slow way,
// which keeps its errors. FuzzFastChoices holds the two to the same result.
//
// encoding/json costs about 15 allocations for a one-choice chat answer
// (decode state, parse stack, field stack, a pointer per optional field);
// this costs the answer's text and, when usage is sent, one usage.
func fastChoices(body []byte, n int) (out []answer, u *usage, ok bool) {
	if n <= 0 || !json.Valid(body) {
		return nil, nil, false
	}
	d := jsonwalk.New(body)
	if d.Next() != '{' {
		return nil, nil, false
	}
	out = make([]answer, n)
	var seenBuf [8]bool
	seen := seenBuf[:0]
	if n <= len(seenBuf) {
		seen = seenBuf[:n]
	} else {
		seen = make([]bool, n)
	}
	ok = d.Members(answerFields, func(k int) bool {
		switch k {
		case 0:
			return readChoices(&d, out, seen)
		case 1:
			u = &usage{}
			return readUsage(&d, u)
		default:
			// Any error object takes the slow path, which reports it.
			return false
		}
	})
	if !ok {
		return nil, nil, false
	}
	for _, s := range seen {
		if !s {
			return nil, nil, false
		}
	}
	return out, u, true
}

// The members each reader takes, in the order of its cases.
var (
	answerFields     = []string{"choices", "usage", "error"}
	choiceFieldNames = []string{"index", "text", "message", "delta", "finish_reason"}
	contentField     = []string{"content"}
	usageFields      = []string{"prompt_tokens", "completion_tokens"}
)

// readChoices reads the choices array into out, marking each index in seen.
func readChoices(d *jsonwalk.Decoder, out []answer, seen []bool) bool {
	return d.Sequence('[', ']', func() bool {
		var c choiceFields
		ok := d.Members(choiceFieldNames, func(k int) bool {
			var ok bool
			switch k {
			case 0:
				c.index, ok = d.Int()
			case 1:
				c.text, ok = d.Str()
			case 2:
				c.message, c.hasMessage, ok = readContent(d)
			case 3:
				c.delta, c.hasDelta, ok = readContent(d)
			default:
				var reason string
				reason, ok = d.Str()
				c.reason = finishReason(&reason)
			}
			return ok
		})
		if !ok || c.index < 0 || c.index >= len(out) || seen[c.index] {
			return false
		}
		seen[c.index] = true
		text := c.text
		switch {
		case c.hasDelta:
			text = c.delta
		case c.hasMessage:
			text = c.message
		}
		if c.reason == "" {
			c.reason = finishReason(nil)
		}
		out[c.index] = answer{Text: text, FinishReason: c.reason}
		return true
	})
}

// choiceFields is one choice as choice.text reads it.
type choiceFields struct {
	index                int
	text                 string
	message, delta       string
	hasMessage, hasDelta bool
	reason               string
}

// readContent reads {"content": ...}; has reports a non-null content.
func readContent(d *jsonwalk.Decoder) (text string, has, ok bool) {
	ok = d.Members(contentField, func(int) bool {
		var ok bool
		text, ok = d.Str()
		has = ok
		return ok
	})
	return text, has, ok
}

// readUsage reads the two counts of a usage object.
func readUsage(d *jsonwalk.Decoder, u *usage) bool {
	return d.Members(usageFields, func(k int) bool {
		var ok bool
		if k == 0 {
			u.PromptTokens, ok = d.Int()
		} else {
			u.CompletionTokens, ok = d.Int()
		}
		return ok
	})
}
