package kserve

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDecodeInferReadsFlatAndNestedBytesTensors(t *testing.T) {
	cases := []struct {
		name  string
		body  string
		want  []string
		shape []int64
	}{
		{"Flat", `{"inputs":[{"name":"text_input","shape":[2],"datatype":"BYTES","data":["a","b"]}]}`, []string{"a", "b"}, []int64{2}},
		{"NestedColumn", `{"inputs":[{"name":"text_input","shape":[2,1],"datatype":"BYTES","data":[["a"],["b"]]}]}`, []string{"a", "b"}, []int64{2, 1}},
		{"FlatDataForColumnShape", `{"inputs":[{"name":"text_input","shape":[2,1],"datatype":"BYTES","data":["a","b"]}]}`, []string{"a", "b"}, []int64{2, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := DecodeInfer([]byte(tc.body))
			require.NoError(t, err)
			require.Equal(t, tc.want, req.Prompts)
			require.Equal(t, tc.shape, req.Shape)
		})
	}
}

func TestDecodeInferReadsParametersFromObjectAndScalarTensors(t *testing.T) {
	req, err := DecodeInfer([]byte(`{"id":"x","parameters":{"max_tokens":5,"temperature":0.5,"stop":"END","priority":1,"timeout":250000},
		"inputs":[{"name":"text_input","shape":[1,1],"datatype":"BYTES","data":[["hi"]]},
		{"name":"top_p","shape":[1],"datatype":"FP32","data":[0.9]},
		{"name":"random_seed","shape":[1,1],"datatype":"UINT64","data":[[7]]}]}`))
	require.NoError(t, err)
	require.Equal(t, "x", req.ID)
	require.EqualValues(t, 5, *req.Params.MaxTokens)
	require.InDelta(t, 0.5, *req.Params.Temperature, 1e-9)
	require.InDelta(t, 0.9, *req.Params.TopP, 1e-9)
	require.EqualValues(t, 7, *req.Params.Seed)
	require.Equal(t, []string{"END"}, req.Params.Stop)
	require.Equal(t, "high", req.Params.Priority)
	require.Equal(t, "250ms", req.Params.Timeout.String())
}

func TestDecodeInferRefusesBadTensors(t *testing.T) {
	cases := map[string]string{
		"WrongDatatype":    `{"inputs":[{"name":"text_input","shape":[1],"datatype":"INT32","data":[1]}]}`,
		"ShapeTooWide":     `{"inputs":[{"name":"text_input","shape":[1,2],"datatype":"BYTES","data":["a","b"]}]}`,
		"CountMismatch":    `{"inputs":[{"name":"text_input","shape":[3],"datatype":"BYTES","data":["a","b"]}]}`,
		"NegativeDim":      `{"inputs":[{"name":"text_input","shape":[-1],"datatype":"BYTES","data":["a"]}]}`,
		"NotAnArray":       `{"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":"a"}]}`,
		"Duplicate":        `{"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]},{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]}]}`,
		"ScalarTwoValues":  `{"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]},{"name":"max_tokens","shape":[2],"datatype":"INT32","data":[1,2]}]}`,
		"ScalarWrongType":  `{"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]},{"name":"max_tokens","shape":[1],"datatype":"FP32","data":[1.5]}]}`,
		"UnknownOutput":    `{"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]}],"outputs":[{"name":"logits"}]}`,
		"StreamOnInfer":    `{"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]},{"name":"stream","shape":[1],"datatype":"BOOL","data":[true]}]}`,
		"TrailingData":     `{"inputs":[]} {}`,
		"ParametersNotObj": `{"parameters":[1],"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]}]}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeInfer([]byte(body))
			var e *Error
			require.True(t, errors.As(err, &e), "err %v", err)
			require.Equal(t, 400, e.Status)
		})
	}
}

func TestDecodeGenerateTakesTopLevelAndParameters(t *testing.T) {
	req, err := DecodeGenerate([]byte(`{"text_input":"hi","max_tokens":3,"bad_words":"","parameters":{"max_tokens":4,"stream":true}}`), true)
	require.NoError(t, err)
	require.Equal(t, []string{"hi"}, req.Prompts)
	require.EqualValues(t, 4, *req.Params.MaxTokens)
	require.True(t, req.Stream)
	_, err = DecodeGenerate([]byte(`{"text_input":"hi","stream":false}`), true)
	require.Error(t, err)
	_, err = DecodeGenerate([]byte(`{"text_input":5}`), false)
	require.Error(t, err)
}

func TestSplitModelPath(t *testing.T) {
	cases := []struct{ in, model, version, action string }{
		{"llama", "llama", "", ""},
		{"llama/ready", "llama", "", "ready"},
		{"llama/versions/1", "llama", "1", ""},
		{"llama/versions/1/infer", "llama", "1", "infer"},
		{"org/llama/generate_stream", "org/llama", "", "generate_stream"},
		{"org%2Fllama/generate", "org/llama", "", "generate"},
	}
	for _, tc := range cases {
		m, v, a := splitModelPath(tc.in)
		require.Equal(t, []string{tc.model, tc.version, tc.action}, []string{m, v, a}, tc.in)
	}
}

// checkDecoded holds for every accepted request: prompts match the shape,
// and stay within the bounds.
func checkDecoded(t *testing.T, req *TextRequest, err error) {
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || (e.Status != 400 && e.Status != 413) {
			t.Fatalf("error %v is not a 400/413 *Error", err)
		}
		return
	}
	n := int64(1)
	for _, d := range req.Shape {
		n *= d
	}
	if int64(len(req.Prompts)) != n || n < 1 || n > maxElements {
		t.Fatalf("%d prompts for shape %v", len(req.Prompts), req.Shape)
	}
	if len(req.Params.Stop) > maxStops {
		t.Fatalf("%d stops", len(req.Params.Stop))
	}
}

func FuzzDecodeInfer(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"text_input","shape":[2,1],"datatype":"BYTES","data":[["a"],["b"]]}]}`))
	f.Add([]byte(`{"parameters":{"max_tokens":5,"stop":["x"]},"inputs":[{"name":"text_input","shape":[1],"datatype":"BYTES","data":["a"]},{"name":"temperature","shape":[1],"datatype":"FP32","data":[0]}]}`))
	f.Add([]byte(`{"inputs":[{"name":"text_input","shape":[1,1,1,1],"datatype":"BYTES","data":[[[["a"]]]]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeInfer(body)
		checkDecoded(t, req, err)
	})
}

func FuzzDecodeGenerate(f *testing.F) {
	f.Add([]byte(`{"text_input":"hi","max_tokens":3,"parameters":{"temperature":0,"stop_words":["a","b"]}}`), false)
	f.Add([]byte(`{"text_input":["hi"],"parameters":{"stream":true,"priority":"low","timeout":1000}}`), true)
	f.Fuzz(func(t *testing.T, body []byte, stream bool) {
		req, err := DecodeGenerate(body, stream)
		checkDecoded(t, req, err)
	})
}
