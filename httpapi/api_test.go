package httpapi

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSeedDecodesAsAnExactInteger(t *testing.T) {
	req, err := decodeInfer([]byte(`{"model":"m","input":"x","parameters":{"temperature":0.5,"seed":9007199254740993}}`))
	require.NoError(t, err)
	require.EqualValues(t, 9007199254740993, *req.Params.Seed)
}

func TestWrongTypesAreNamedInJSONTerms(t *testing.T) {
	for _, tc := range []struct {
		body, decoder, want string
	}{
		{`{"model":"m","messages":"hi"}`, "chat", "messages must be an array of {role, content} objects; got a JSON string"},
		{`{"model":"m","messages":[1]}`, "chat", "messages must be an array of {role, content} objects; got a JSON number"},
		{`{"model":"m","messages":[{"role":1,"content":"x"}]}`, "chat", "messages.role must be a string; got a JSON number"},
		{`{"model":5,"messages":[]}`, "chat", "model must be a string; got a JSON number"},
		{`{"model":"m","max_tokens":"9","prompt":"x"}`, "completion", "max_tokens must be an integer; got a JSON string"},
		{`{"model":"m","temperature":true,"prompt":"x"}`, "completion", "temperature must be a number; got a JSON bool"},
		{`{"model":"m","stream":"yes","prompt":"x"}`, "completion", "stream must be true or false; got a JSON string"},
		{`{"model":"m","stream_options":[],"prompt":"x"}`, "completion", "stream_options must be an object; got a JSON array"},
		{`{"model":"m","prompt":5}`, "completion", "prompt must be a string or an array of strings; got a JSON number"},
		{`{"model":"m","input":"x","parameters":"p"}`, "infer", "parameters must be an object; got a JSON string"},
		{`{"model":"m","input":"x","parameters":{"seed":1.5}}`, "infer", "parameters.seed must be an integer; got a JSON number"},
	} {
		decode := map[string]decoder{"chat": decodeChat, "completion": decodeCompletion, "infer": decodeInfer}[tc.decoder]
		_, err := decode([]byte(tc.body))
		var ae *Error
		require.True(t, errors.As(err, &ae), "%s: %v", tc.body, err)
		require.Equal(t, 400, ae.Status)
		require.Equal(t, tc.want, ae.Message, tc.body)
		for _, goism := range []string{"struct", "[]", "int64", "float64", "*", "json:"} {
			require.False(t, strings.Contains(ae.Message, goism), "%q shows Go's %q", ae.Message, goism)
		}
	}
}
