package engine

import (
	"strings"
	"unicode/utf8"
)

// textOut assembles a sequence's completion from decoded token pieces and
// decides what may be streamed. Pieces can be single bytes of a UTF-8
// sequence (byte-fallback tokens), so bytes wait in pend until they form a
// whole character; invalid bytes become U+FFFD, so streamed text is always
// valid UTF-8. Text that could be the start of a stop string is held back
// until it is known not to be one, so a stop string is never streamed.
type textOut struct {
	pend    []byte
	text    []byte
	emitted int
	stop    []string
	maxStop int
}

func (o *textOut) reset(stop []string) {
	o.pend = o.pend[:0]
	o.text = o.text[:0]
	o.emitted = 0
	o.stop = o.stop[:0]
	o.maxStop = 0
	for _, s := range stop {
		if s != "" {
			o.stop = append(o.stop, s)
			o.maxStop = max(o.maxStop, len(s))
		}
	}
}

// isControlByte mirrors run.c's safe_printf, which drops pieces that are a
// single unprintable ASCII byte (raw control bytes from byte tokens).
// Bytes >= 0x80 are kept: they are parts of UTF-8 characters.
func isControlByte(p string) bool {
	if len(p) != 1 {
		return false
	}
	c := p[0]
	switch c {
	case '\t', '\n', '\v', '\f', '\r':
		return false
	}
	return c < 0x20 || c == 0x7f
}

// add appends a piece. It returns the text that may be streamed now and
// whether a stop string ended the completion.
func (o *textOut) add(piece string) (emit string, stopped bool) {
	if isControlByte(piece) {
		return "", false
	}
	o.pend = append(o.pend, piece...)
	return o.consume(false)
}

// flush ends the completion: bytes of an unfinished character become
// U+FFFD and everything not yet streamed is returned.
func (o *textOut) flush() (emit string, stopped bool) {
	return o.consume(true)
}

func (o *textOut) consume(final bool) (string, bool) {
	before := len(o.text)
	i := 0
	for i < len(o.pend) {
		r, size := utf8.DecodeRune(o.pend[i:])
		if r == utf8.RuneError && size <= 1 {
			if !final && !utf8.FullRune(o.pend[i:]) {
				break
			}
			o.text = append(o.text, "\uFFFD"...)
			if !utf8.FullRune(o.pend[i:]) {
				i = len(o.pend)
				break
			}
			i++
			continue
		}
		o.text = append(o.text, o.pend[i:i+size]...)
		i += size
	}
	o.pend = o.pend[:copy(o.pend, o.pend[i:])]
	if len(o.stop) > 0 {
		from := max(0, before-o.maxStop+1)
		cut := -1
		for _, s := range o.stop {
			if j := strings.Index(string(o.text[from:]), s); j >= 0 && (cut < 0 || from+j < cut) {
				cut = from + j
			}
		}
		if cut >= 0 {
			o.text = o.text[:cut]
			return o.emit(cut), true
		}
	}
	upto := len(o.text)
	if !final {
		upto -= o.holdback()
	}
	return o.emit(upto), false
}

func (o *textOut) emit(upto int) string {
	if upto <= o.emitted {
		return ""
	}
	s := string(o.text[o.emitted:upto])
	o.emitted = upto
	return s
}

// holdback is the length of the longest suffix of the text that is a
// proper prefix of a stop string.
func (o *textOut) holdback() int {
	best := 0
	for _, s := range o.stop {
		for k := min(len(s)-1, len(o.text)); k > best; k-- {
			if string(o.text[len(o.text)-k:]) == s[:k] {
				best = k
				break
			}
		}
	}
	return best
}
