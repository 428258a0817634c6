package httpapi

import (
	"strconv"
	"unicode/utf8"
)

// appendChatAnswer appends a's JSON exactly as encoding/json's Encoder writes it (HTML
// escaping on, members in field order, no newline): every non-streamed chat answer and every
// cache hit is one, and reflection was 3% of a node's CPU on a cache hit.
// FuzzChatAnswerJSON holds the two equal.
func appendChatAnswer(dst []byte, a *chatAnswer) []byte {
	dst = append(dst, `{"choices":`...)
	if a.Choices == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i := range a.Choices {
			c := &a.Choices[i]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"index":`...)
			dst = strconv.AppendInt(dst, int64(c.Index), 10)
			dst = append(dst, `,"message":{"role":`...)
			dst = appendJSONString(dst, c.Message.Role)
			dst = append(dst, `,"content":`...)
			dst = appendJSONString(dst, c.Message.Content)
			dst = append(dst, `},"finish_reason":`...)
			dst = appendJSONString(dst, c.FinishReason)
			if c.Logprobs == nil {
				dst = append(dst, `,"logprobs":null}`...)
			} else {
				dst = append(dst, `,"logprobs":{}}`...)
			}
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"created":`...)
	dst = strconv.AppendInt(dst, a.Created, 10)
	dst = append(dst, `,"id":`...)
	dst = appendJSONString(dst, a.ID)
	dst = append(dst, `,"model":`...)
	dst = appendJSONString(dst, a.Model)
	dst = append(dst, `,"object":`...)
	dst = appendJSONString(dst, a.Object)
	dst = append(dst, `,"system_fingerprint":`...)
	dst = appendJSONString(dst, a.SystemFingerprint)
	dst = append(dst, `,"usage":{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.Usage.PromptTokens), 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.Usage.CompletionTokens), 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.Usage.TotalTokens), 10)
	return append(dst, "}}"...)
}

const hexDigits = "0123456789abcdef"

// jsonSafe marks the ASCII bytes appendJSONString copies as they are: one
// table load per byte instead of six comparisons.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := range t {
		t[b] = b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

// appendJSONString appends s as encoding/json quotes it with HTML escaping: <, > and & as
// \u003c, \u003e and \u0026, control characters escaped, invalid UTF-8 as \ufffd, and U+2028
// and U+2029 escaped for JavaScript.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
