package openai

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
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
	d := fastDecoder{b: body}
	if d.next() != '{' {
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
	var got [3]bool // choices, usage, error
	ok = d.object(func(key []byte) bool {
		switch k := fieldIndex(key, "choices", "usage", "error"); {
		case k < 0 || got[k]:
			return k == -1 && d.skip()
		case k == 0:
			got[0] = true
			return d.choices(out, seen)
		case k == 1:
			got[1] = true
			if d.null() {
				return true
			}
			u = &usage{}
			return d.usage(u)
		default:
			// Any error object takes the slow path, which reports it.
			got[2] = true
			return d.null()
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

// fastDecoder walks a body json.Valid accepted, so it only checks types,
// never syntax.
type fastDecoder struct {
	b []byte
	i int
}

// next skips white space and returns the next byte without consuming it.
func (d *fastDecoder) next() byte {
	for d.i < len(d.b) {
		switch c := d.b[d.i]; c {
		case ' ', '\t', '\r', '\n':
			d.i++
		default:
			return c
		}
	}
	return 0
}

// null consumes a null and reports whether there was one.
func (d *fastDecoder) null() bool {
	if d.next() == 'n' {
		d.i += len("null")
		return true
	}
	return false
}

// object walks an object, calling field with each key (its raw bytes,
// positioned at the value) until field returns false. A key with escapes
// or non-ASCII bytes fails: encoding/json folds case, Unicode included.
func (d *fastDecoder) object(field func(key []byte) bool) bool {
	return d.sequence('{', '}', func() bool {
		key, plain := d.rawString()
		if !plain {
			return false
		}
		for _, c := range key {
			if c >= utf8.RuneSelf {
				return false
			}
		}
		d.next()
		d.i++ // ':'
		return field(key)
	})
}

// sequence walks an object or array (open ... close), calling each for
// every member until it returns false; the commas and the end are its.
func (d *fastDecoder) sequence(open, close byte, each func() bool) bool {
	if d.next() != open {
		return false
	}
	d.i++
	if d.next() == close {
		d.i++
		return true
	}
	for {
		if !each() {
			return false
		}
		switch d.next() {
		case ',':
			d.i++
		case close:
			d.i++
			return true
		default:
			return false
		}
	}
}

// rawString consumes a string and returns its bytes between the quotes;
// plain is false when it has escapes or invalid UTF-8.
func (d *fastDecoder) rawString() (raw []byte, plain bool) {
	if d.next() != '"' {
		return nil, false
	}
	start := d.i + 1
	plain = true
	for d.i = start; d.b[d.i] != '"'; d.i++ {
		if d.b[d.i] == '\\' {
			plain = false
			d.i++
		}
	}
	raw = d.b[start:d.i]
	d.i++
	return raw, plain && utf8.Valid(raw)
}

// str consumes a string value as encoding/json decodes it. A string with
// escapes goes through encoding/json itself (rare: one allocation more).
func (d *fastDecoder) str() (string, bool) {
	if d.next() != '"' {
		return "", false
	}
	start := d.i
	raw, plain := d.rawString()
	if plain {
		return string(raw), true
	}
	var s string
	if err := json.Unmarshal(d.b[start:d.i], &s); err != nil {
		return "", false
	}
	return s, true
}

// int consumes a number that fits an int.
func (d *fastDecoder) int() (int, bool) {
	start := d.i
	for d.i < len(d.b) && strings.IndexByte("-+.0123456789eE", d.b[d.i]) >= 0 {
		d.i++
	}
	v, err := strconv.ParseInt(string(d.b[start:d.i]), 10, 0)
	return int(v), err == nil
}

// skip consumes any value.
func (d *fastDecoder) skip() bool {
	switch d.next() {
	case '"':
		d.rawString()
	case '{', '[':
		depth := 0
		for ; ; d.i++ {
			switch d.b[d.i] {
			case '"':
				d.rawString()
				d.i--
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					d.i++
					return true
				}
			}
		}
	default:
		for d.i < len(d.b) && strings.IndexByte(",}] \t\r\n", d.b[d.i]) < 0 {
			d.i++
		}
	}
	return true
}

// choices reads the choices array into out, marking each index in seen.
func (d *fastDecoder) choices(out []answer, seen []bool) bool {
	return d.sequence('[', ']', func() bool {
		var (
			c   choiceFields
			got [5]bool
		)
		ok := d.object(func(key []byte) bool {
			k := fieldIndex(key, "index", "text", "message", "delta", "finish_reason")
			if k < 0 || got[k] {
				return k == -1 && d.skip()
			}
			got[k] = true
			if d.null() {
				return true
			}
			var ok bool
			switch k {
			case 0:
				c.index, ok = d.int()
			case 1:
				c.text, ok = d.str()
			case 2:
				c.message, c.hasMessage, ok = d.content()
			case 3:
				c.delta, c.hasDelta, ok = d.content()
			default:
				var reason string
				reason, ok = d.str()
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

// content reads {"content": ...}; has reports a non-null content.
func (d *fastDecoder) content() (text string, has, ok bool) {
	seen := false
	ok = d.object(func(key []byte) bool {
		k := fieldIndex(key, "content")
		if k < 0 || seen {
			return k == -1 && d.skip()
		}
		seen = true
		if d.null() {
			return true
		}
		var ok bool
		text, ok = d.str()
		has = ok
		return ok
	})
	return text, has, ok
}

// usage reads the two counts of a usage object.
func (d *fastDecoder) usage(u *usage) bool {
	var got [2]bool
	return d.object(func(key []byte) bool {
		k := fieldIndex(key, "prompt_tokens", "completion_tokens")
		if k < 0 || got[k] {
			return k == -1 && d.skip()
		}
		got[k] = true
		if d.null() {
			return true
		}
		var ok bool
		if k == 0 {
			u.PromptTokens, ok = d.int()
		} else {
			u.CompletionTokens, ok = d.int()
		}
		return ok
	})
}

// fieldIndex returns which of names key is, -1 for none, or -2 for one it
// matches only ignoring case (encoding/json would take it; the fast path
// does not).
func fieldIndex(key []byte, names ...string) int {
	for i, name := range names {
		if string(key) == name {
			return i
		}
	}
	for _, name := range names {
		if strings.EqualFold(string(key), name) {
			return -2
		}
	}
	return -1
}
