// Package jsonwalk reads JSON bodies that json.Valid accepted without
// reflection, for the hot paths that decode one known shape per request.
// Callers read the members they handle exactly as encoding/json would and
// fall back to encoding/json for anything else, and a fuzz test holds each
// caller's result equal to encoding/json's.
package jsonwalk

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Decoder walks a body json.Valid accepted, so it only checks types, never
// syntax. Its users read the members they know the way encoding/json would
// and give up (so the caller falls back to encoding/json) on anything else.
type Decoder struct {
	b []byte
	i int
}

// New returns a Decoder at the start of body, which json.Valid must accept.
func New(body []byte) Decoder { return Decoder{b: body} }

// Next skips white space and returns the next byte without consuming it.
func (d *Decoder) Next() byte {
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

// Null consumes a null and reports whether there was one.
func (d *Decoder) Null() bool {
	if d.Next() == 'n' {
		d.i += len("null")
		return true
	}
	return false
}

// Object walks an object, calling field with each key (its raw bytes,
// positioned at the value) until field returns false. A key with escapes
// or non-ASCII bytes fails: encoding/json folds case, Unicode included.
func (d *Decoder) Object(field func(key []byte) bool) bool {
	return d.Sequence('{', '}', func() bool {
		key, plain := d.RawString()
		if !plain {
			return false
		}
		for _, c := range key {
			if c >= utf8.RuneSelf {
				return false
			}
		}
		d.Next()
		d.i++ // ':'
		return field(key)
	})
}

// Sequence walks an object or array (open ... close), calling each for
// every member until it returns false; the commas and the end are its.
func (d *Decoder) Sequence(open, close byte, each func() bool) bool {
	if d.Next() != open {
		return false
	}
	d.i++
	if d.Next() == close {
		d.i++
		return true
	}
	for {
		if !each() {
			return false
		}
		switch d.Next() {
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

// RawString consumes a string and returns its bytes between the quotes;
// plain is false when it has escapes or invalid UTF-8.
func (d *Decoder) RawString() (raw []byte, plain bool) {
	if d.Next() != '"' {
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

// Str consumes a string value as encoding/json decodes it. A string with
// escapes goes through encoding/json itself (rare: one allocation more).
func (d *Decoder) Str() (string, bool) {
	if d.Next() != '"' {
		return "", false
	}
	start := d.i
	raw, plain := d.RawString()
	if plain {
		return string(raw), true
	}
	var s string
	if err := json.Unmarshal(d.b[start:d.i], &s); err != nil {
		return "", false
	}
	return s, true
}

// Int consumes a number that fits an int.
func (d *Decoder) Int() (int, bool) {
	v, err := strconv.ParseInt(string(d.number()), 10, 0)
	return int(v), err == nil
}

// Skip consumes any value.
func (d *Decoder) Skip() bool {
	switch d.Next() {
	case '"':
		d.RawString()
	case '{', '[':
		depth := 0
		for ; ; d.i++ {
			switch d.b[d.i] {
			case '"':
				d.RawString()
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

// FieldIndex returns which of names key is, -1 for none, or -2 for one it
// matches only ignoring case (encoding/json would take it; the fast path
// does not).
func FieldIndex(key []byte, names ...string) int {
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

// Int64 consumes a number that fits an int64.
func (d *Decoder) Int64() (int64, bool) {
	v, err := strconv.ParseInt(string(d.number()), 10, 64)
	return v, err == nil
}

// Float consumes a number as encoding/json decodes it into a float64.
func (d *Decoder) Float() (float64, bool) {
	v, err := strconv.ParseFloat(string(d.number()), 64)
	return v, err == nil
}

// number consumes a number's bytes.
func (d *Decoder) number() []byte {
	d.Next()
	start := d.i
	for d.i < len(d.b) && strings.IndexByte("-+.0123456789eE", d.b[d.i]) >= 0 {
		d.i++
	}
	return d.b[start:d.i]
}

// Bool consumes true or false.
func (d *Decoder) Bool() (v, ok bool) {
	switch d.Next() {
	case 't':
		d.i += len("true")
		return true, true
	case 'f':
		d.i += len("false")
		return false, true
	}
	return false, false
}

// Members walks an object whose members of interest are names (at most 64), calling each with
// a member's index once its value is not null: null leaves a field at zero, as encoding/json
// does. Other members are skipped; a member named twice, or matching a name only ignoring
// case, fails, since encoding/json would take it.
func (d *Decoder) Members(names []string, each func(k int) bool) bool {
	var got uint64
	return d.Object(func(key []byte) bool {
		k := FieldIndex(key, names...)
		if k == -1 {
			return d.Skip()
		}
		if k < 0 || got&(1<<k) != 0 {
			return false
		}
		got |= 1 << k
		return d.Null() || each(k)
	})
}
