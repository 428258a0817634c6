package engine

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func pieces(tok *Tokenizer, ids []int) []string {
	var out []string
	for _, id := range ids {
		out = append(out, tok.Piece(id))
	}
	return out
}

func decodeAll(tok *Tokenizer, ids []int) string {
	var b strings.Builder
	for i := 1; i < len(ids); i++ {
		b.WriteString(tok.Decode(ids[i-1], ids[i]))
	}
	return b.String()
}

func TestEncodeMergesLikeRunC(t *testing.T) {
	tok := tinyTokenizer(t)
	cases := map[string][]string{
		"hello world": {"\n<s>\n", " hello", " world"},
		"the cat sat": {"\n<s>\n", " the", " cat", " sat"},
		"":            {"\n<s>\n"},
		"hell":        {"\n<s>\n", " hell"},
		"日本":          {"\n<s>\n", " ", "日本"},
	}
	for text, want := range cases {
		require.Equal(t, want, pieces(tok, tok.Encode(text, true, false)), "%q", text)
	}
	ids := tok.Encode("hello", false, true)
	require.Equal(t, []string{" hello", "\n</s>\n"}, pieces(tok, ids))
}

func TestEncodeFallsBackToBytesForUnknownCharacters(t *testing.T) {
	tok := tinyTokenizer(t)
	ids := tok.Encode("z€", true, false)
	// "z" and the three bytes of "€" are not in the vocabulary.
	require.Equal(t, []int{TokenBOS, tok.lookup[" "], byteTokenBase + 'z', byteTokenBase + 0xE2, byteTokenBase + 0x82, byteTokenBase + 0xAC}, ids)
	require.Equal(t, "z€", decodeAll(tok, ids))
}

func TestDecodeStripsSpaceAfterBOSAndRendersBytes(t *testing.T) {
	tok := tinyTokenizer(t)
	hello := tok.lookup[" hello"]
	require.Equal(t, "hello", tok.Decode(TokenBOS, hello))
	require.Equal(t, " hello", tok.Decode(hello, hello))
	require.Equal(t, "\n", tok.Decode(hello, byteTokenBase+'\n'))
	require.Equal(t, "\xff", tok.Decode(hello, byteTokenBase+0xFF))
	require.Equal(t, "", tok.Decode(hello, -1))
	require.Equal(t, "", tok.Decode(hello, tok.VocabSize()))
}

func TestRoundTripKeepsAnyBytes(t *testing.T) {
	tok := tinyTokenizer(t)
	for _, s := range []string{
		"hello world", "  leading spaces", "the\tcat\nsat.", "é日本日", "\xff\xfe invalid \xc3", "\x00nul", "\xe6\x97", // truncated 日
		"\x80\x80\x80\x80\x80\x80", "hello, world!\n",
	} {
		ids := tok.Encode(s, true, false)
		require.Equal(t, s, decodeAll(tok, ids), "%q -> %v", s, pieces(tok, ids))
	}
}

// naiveMerge is run.c's merge loop verbatim: rescan all pairs, merge the
// best-scoring (leftmost on ties), repeat.
func naiveMerge(t *Tokenizer, toks []int) []int {
	toks = append([]int(nil), toks...)
	for {
		best, bestID, bestIdx := float32(-1e10), -1, -1
		for i := 0; i+1 < len(toks); i++ {
			id, ok := t.lookup[t.pieces[toks[i]]+t.pieces[toks[i+1]]]
			if ok && t.scores[id] > best {
				best, bestID, bestIdx = t.scores[id], id, i
			}
		}
		if bestIdx < 0 {
			return toks
		}
		toks[bestIdx] = bestID
		toks = append(toks[:bestIdx+1], toks[bestIdx+2:]...)
	}
}

func TestHeapMergeEqualsRunCMergeLoop(t *testing.T) {
	// Equal scores everywhere force the leftmost tie-break.
	p, s := tinyPieces()
	flat := make([]float32, len(s))
	ties, err := NewTokenizer(p, flat)
	require.NoError(t, err)
	for _, tok := range []*Tokenizer{tinyTokenizer(t), ties} {
		for _, text := range []string{"hello world the cat", "hellohellohello", "aaaa llll", "the the thethe", "wor world worl", "日本日本 é"} {
			ids := tok.Encode(text, true, false)
			// Undo merging: start again from the per-character tokens.
			var start []int
			start = append(start, TokenBOS, tok.spaceID)
			for _, r := range text {
				if id, ok := tok.lookup[string(r)]; ok {
					start = append(start, id)
				} else {
					for _, b := range []byte(string(r)) {
						start = append(start, byteTokenBase+int(b))
					}
				}
			}
			require.Equal(t, naiveMerge(tok, start), ids, "%q", text)
		}
	}
}

func TestTokenizerWriteReadRoundTrip(t *testing.T) {
	tok := tinyTokenizer(t)
	var buf bytes.Buffer
	_, err := tok.WriteTo(&buf)
	require.NoError(t, err)
	back, err := ParseTokenizer(buf.Bytes(), tok.VocabSize())
	require.NoError(t, err)
	require.Equal(t, tok.pieces, back.pieces)
	require.Equal(t, tok.scores, back.scores)
	require.Equal(t, tok.maxTokenLen, back.maxTokenLen)
}

func TestParseTokenizerRejectsMalformedFiles(t *testing.T) {
	data := tokenizerBytes(t, tinyTokenizer(t))
	_, err := ParseTokenizer(data[:2], 0)
	require.ErrorIs(t, err, ErrTruncated)
	_, err = ParseTokenizer(data[:len(data)-1], 0)
	require.ErrorIs(t, err, ErrTruncated)
	bad := append([]byte(nil), data...)
	bad[8], bad[9], bad[10], bad[11] = 0xff, 0xff, 0xff, 0xff // first piece length -1
	_, err = ParseTokenizer(bad, 0)
	require.ErrorIs(t, err, ErrBadTokenizer)
	_, err = ParseTokenizer([]byte{0, 0, 0, 0}, 0)
	require.ErrorIs(t, err, ErrBadTokenizer, "no pieces")
}

func FuzzParseTokenizer(f *testing.F) {
	f.Add(tokenizerBytes(f, tinyTokenizer(f)), "hello world")
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'a'}, "aaa")
	f.Add([]byte{}, "")
	f.Fuzz(func(t *testing.T, data []byte, text string) {
		tok, err := ParseTokenizer(data, 0)
		if err != nil {
			return
		}
		// Whatever the vocabulary, encoding and decoding must not fail,
		// and every id must be a valid one.
		ids := tok.Encode(text, true, true)
		for i, id := range ids {
			require.True(t, id >= 0 && (id < tok.VocabSize() || id <= TokenEOS), "id %d", id)
			if i > 0 {
				tok.Decode(ids[i-1], id)
			}
		}
	})
}

func FuzzEncodeDecodeRoundTrip(f *testing.F) {
	tok := tinyTokenizer(f)
	for _, s := range []string{"hello world", "\xff\xfe", "日本 é", "", " ", "\x00", "<0x41>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s, true, false)
		require.Equal(t, s, decodeAll(tok, ids))
		// The streamed text is valid UTF-8 whatever the bytes.
		var out textOut
		out.reset(nil)
		var streamed strings.Builder
		for i := 1; i < len(ids); i++ {
			e, _ := out.add(tok.Decode(ids[i-1], ids[i]))
			streamed.WriteString(e)
		}
		e, _ := out.flush()
		streamed.WriteString(e)
		require.True(t, utf8.ValidString(streamed.String()))
		require.Equal(t, string(out.text), streamed.String())
	})
}
