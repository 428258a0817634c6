package openai

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFastChoicesTakesCommonAnswers(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		n          int
	}{
		{"chat", `{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,` +
			`"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],` +
			`"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18,"details":{"a":[1,{"b":"]}"}]}}}`, 1},
		{"completions out of order", `{"choices":[{"index":1,"text":"b","finish_reason":"length"},{"index":0,"text":"a"}],"usage":null}`, 2},
		{"escapes", `{"choices":[{"index":0,"message":{"content":"a\nb \u00e9 \ud800"},"finish_reason":null}]}`, 1},
		{"null content falls back to text", `{"choices":[{"index":0,"text":"t","message":{"content":null},"delta":null}]}`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fast, fu, ok := fastChoices([]byte(tc.body), tc.n)
			require.True(t, ok)
			slow, su, err := slowChoices([]byte(tc.body), tc.n)
			require.NoError(t, err)
			require.Equal(t, slow, fast)
			require.Equal(t, su, fu)
		})
	}
}

func TestFastChoicesLeavesTheRestToEncodingJSON(t *testing.T) {
	for _, body := range []string{
		`{"Choices":[{"index":0,"text":"a"}]}`,                                    // case-folded key
		`{"choices":[{"index":0,"text":"a"}],"choices":[{"index":0,"text":"b"}]}`, // duplicate
		`{"choices":[{"index":0,"text":"a"}],"error":{"message":"x"}}`,
		`{"choices":[{"index":1.0,"text":"a"}]}`,
		`{"choices":[{"index":0,"text":5}]}`,
		`{"choices":[null]}`,
		`{"choices":[{"index":0,"text":"a"}]} x`,
		`{"choices":[{"index":0,"text":"a"},{"index":0,"text":"b"}]}`,
		`{"choices":[]}`,
		`{"choices":[{"index":0,"text":"a"}],"usage":{"prompt_tokens":1e3}}`,
	} {
		_, _, ok := fastChoices([]byte(body), 1)
		require.False(t, ok, body)
	}
}

// FuzzFastChoices holds the fast decoder to encoding/json's result
// whenever it takes a body.
func FuzzFastChoices(f *testing.F) {
	f.Add([]byte(`{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9}}`), uint8(1))
	f.Add([]byte(`{"choices":[{"index":1,"text":"b"},{"index":0,"text":"a","finish_reason":"max_tokens"}],"usage":{}}`), uint8(2))
	f.Add([]byte(`{"choices":[{"index":0,"delta":{"content":"d"},"message":{"content":"m"},"text":"t"}],"error":null}`), uint8(1))
	f.Add([]byte(`{"choices":[{"index":0,"text":"\u00e9\n\ud83d\ude00 \xff"}],"x":[{"y":"]"},true,-1.5e3,null]}`), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		prompts := int(n)%4 + 1
		fast, fu, ok := fastChoices(data, prompts)
		if !ok {
			return
		}
		slow, su, err := slowChoices(data, prompts)
		require.NoError(t, err)
		require.Equal(t, slow, fast)
		require.Equal(t, su, fu)
	})
}
