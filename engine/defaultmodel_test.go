package engine

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/scheduler"
)

func fileSum(t *testing.T, path string) [32]byte {
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(data)
}

func TestGenerateModelIsDeterministic(t *testing.T) {
	opts := GenOptions{Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 1024, SeqLen: 64, Seed: 3}
	a, b := t.TempDir(), t.TempDir()
	require.NoError(t, GenerateModel(a, opts))
	require.NoError(t, GenerateModel(b, opts))
	for _, f := range []string{"model.bin", "tokenizer.bin"} {
		require.Equal(t, fileSum(t, filepath.Join(a, f)), fileSum(t, filepath.Join(b, f)), f)
	}
	opts.Seed = 4
	require.NoError(t, GenerateModel(b, opts))
	require.NotEqual(t, fileSum(t, filepath.Join(a, "model.bin")), fileSum(t, filepath.Join(b, "model.bin")))
	info, err := Inspect(filepath.Join(a, "model.bin"))
	require.NoError(t, err)
	require.Equal(t, 2, info.KVHeads)
	require.Equal(t, 1024, info.Vocab)
}

func TestGenerateModelRejectsBadOptions(t *testing.T) {
	for name, o := range map[string]GenOptions{
		"small vocab": {Dim: 64, HiddenDim: 64, Layers: 1, Heads: 4, Vocab: 100, SeqLen: 8},
		"heads":       {Dim: 64, HiddenDim: 64, Layers: 1, Heads: 5, Vocab: 600, SeqLen: 8},
		"no layers":   {Dim: 64, HiddenDim: 64, Heads: 4, Vocab: 600, SeqLen: 8},
	} {
		require.ErrorIs(t, GenerateModel(t.TempDir(), o), ErrInvalidConfig, name)
	}
}

func TestBuiltInVocabularyHasRunCConventions(t *testing.T) {
	vocab, scores, kinds := buildVocab(4096)
	require.Len(t, vocab, 4096)
	require.Len(t, scores, 4096)
	require.Equal(t, []string{"<unk>", "\n<s>\n", "\n</s>\n", "<0x00>"}, vocab[:4])
	require.Equal(t, "<0xFF>", vocab[258])
	require.Equal(t, kindByte, kinds[100])
	tok, err := NewTokenizer(vocab, scores)
	require.NoError(t, err)
	// Whole words come out of run.c's merges.
	ids := tok.Encode("Once upon a time there was a little girl named Lily.", true, false)
	require.Less(t, len(ids), 14, "%q", pieces(tok, ids))
}

// The built-in model's text is made of its vocabulary's words, not bytes or
// fragments, greedy or sampled.
func TestBuiltInModelWritesWords(t *testing.T) {
	b, err := New(context.Background(), Config{DataDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	known := map[string]bool{}
	for _, w := range strings.Fields(defaultWords) {
		known[w] = true
	}
	for _, p := range []scheduler.Params{{MaxTokens: 80}, {MaxTokens: 80, Temperature: 1, Seed: seed(1)}, {MaxTokens: 80, Temperature: 0.8, TopP: 0.9, Seed: seed(2)}} {
		task := newTask(context.Background(), "Once upon a time", p)
		require.True(t, b.Admit(task))
		res, err := outcome(t, task)
		require.NoError(t, err)
		words := strings.FieldsFunc(res.Text, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune(".,!?", r) })
		good := 0
		for _, w := range words {
			if known[strings.ToLower(w)] {
				good++
			}
		}
		require.Greater(t, len(words), 40, "%q", res.Text)
		require.GreaterOrEqual(t, float64(good)/float64(len(words)), 0.9, "%q", res.Text)
		t.Logf("%+v: %s", p, res.Text)
	}
}
