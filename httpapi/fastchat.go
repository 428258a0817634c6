package httpapi

import (
	"encoding/json"

	"github.com/shoal-dev/shoal/internal/jsonwalk"
)

// fastChat decodes a chat body into b, which must be zero, without reflection, for the bodies
// clients send most: it reports false, leaving b to be zeroed and decoded by decodeStrict, on
// anything it does not decode exactly as encoding/json would: invalid JSON, a value of
// another type, a member named twice or only matching a field ignoring case, content given as
// parts, "stop". Unknown members are skipped, as encoding/json skips them. FuzzFastChat holds
// the two to the same result. Decoding the client's body was 8.6% of a node's CPU on a cache
// hit, most of it encoding/json's reflection.
func fastChat(body []byte, b *chatBody) bool {
	if !json.Valid(body) {
		return false
	}
	d := jsonwalk.New(body)
	if d.Next() != '{' {
		return false
	}
	return d.Members(chatFields, func(k int) bool {
		var ok bool
		switch k {
		case 0:
			b.Model, ok = d.Str()
		case 1:
			b.Messages, ok = fastMessages(&d)
		case 2:
			b.MaxTokens, ok = fastInt(&d)
		case 3:
			b.MaxCompletionTokens, ok = fastInt(&d)
		case 4:
			b.Temperature, ok = fastFloat(&d)
		case 5:
			b.TopP, ok = fastFloat(&d)
		case 6:
			b.N, ok = fastInt(&d)
		case 7:
			b.Stream, ok = d.Bool()
		case 8:
			b.StreamOptions, ok = fastStreamOptions(&d)
		case 9:
			var v int64
			if v, ok = d.Int64(); ok {
				b.Seed = &v
			}
		case 10:
			b.Priority, ok = d.Str()
		case 11:
			b.User, ok = d.Str()
		}
		// "stop" (12) takes the slow path.
		return ok
	})
}

// The members each reader takes, in the order of its cases.
var (
	chatFields = []string{"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
		"n", "stream", "stream_options", "seed", "priority", "user", "stop"}
	messageFields      = []string{"role", "content"}
	streamOptionFields = []string{"include_usage"}
)

func fastMessages(d *jsonwalk.Decoder) ([]chatMessage, bool) {
	// Not nil: encoding/json makes an empty array an empty slice.
	msgs := make([]chatMessage, 0, 1)
	ok := d.Sequence('[', ']', func() bool {
		var m chatMessage
		if d.Null() {
			msgs = append(msgs, m)
			return true
		}
		ok := d.Members(messageFields, func(k int) bool {
			var ok bool
			if k == 0 {
				m.Role, ok = d.Str()
			} else {
				// Parts ([...]) take the slow path.
				m.Content.text, ok = d.Str()
			}
			return ok
		})
		msgs = append(msgs, m)
		return ok
	})
	return msgs, ok
}

func fastInt(d *jsonwalk.Decoder) (*int, bool) {
	v, ok := d.Int()
	if !ok {
		return nil, false
	}
	return &v, true
}

func fastFloat(d *jsonwalk.Decoder) (*float64, bool) {
	v, ok := d.Float()
	if !ok {
		return nil, false
	}
	return &v, true
}

func fastStreamOptions(d *jsonwalk.Decoder) (*streamOptions, bool) {
	o := &streamOptions{}
	ok := d.Members(streamOptionFields, func(int) bool {
		var ok bool
		o.IncludeUsage, ok = d.Bool()
		return ok
	})
	return o, ok
}
