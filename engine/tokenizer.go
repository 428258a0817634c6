package engine

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
)

// Special token ids of llama2.c's sentencepiece vocabularies.
const (
	TokenUnk = 0
	TokenBOS = 1
	TokenEOS = 2
	// byteTokenBase is the id of <0x00>; byte b is token byteTokenBase+b.
	byteTokenBase = 3
)

// mergeFloor mirrors run.c, which starts its search for the best merge at
// a score of -1e10, so pieces scoring at or below it never merge.
const mergeFloor = -1e10

// maxPieceLen bounds one vocabulary piece when loading, far above any real
// vocabulary, so a corrupt length cannot make the loader allocate wildly.
const maxPieceLen = 1 << 16

// Tokenizer is a llama2.c tokenizer: sentencepiece pieces with merge scores,
// encoded by run.c's greedy highest-score pair merging. It is immutable and
// safe for concurrent use.
type Tokenizer struct {
	pieces      []string
	scores      []float32
	maxTokenLen int
	lookup      map[string]int
	// spaceID is the piece " " used as sentencepiece's dummy prefix, or -1.
	spaceID int
}

// NewTokenizer builds a tokenizer from pieces and their merge scores. Byte
// fallback expects pieces "<0x00>".."<0xFF>" at ids 3..258.
func NewTokenizer(pieces []string, scores []float32) (*Tokenizer, error) {
	if len(pieces) != len(scores) {
		return nil, fmt.Errorf("%w: %d pieces but %d scores", ErrBadTokenizer, len(pieces), len(scores))
	}
	if len(pieces) == 0 {
		return nil, fmt.Errorf("%w: empty vocabulary", ErrBadTokenizer)
	}
	t := &Tokenizer{pieces: pieces, scores: scores, lookup: make(map[string]int, len(pieces)), spaceID: -1}
	for i, p := range pieces {
		t.maxTokenLen = max(t.maxTokenLen, len(p))
		// With duplicate pieces the lowest id wins, so lookups are
		// deterministic (run.c's bsearch picks any).
		if _, ok := t.lookup[p]; !ok {
			t.lookup[p] = i
		}
	}
	if id, ok := t.lookup[" "]; ok {
		t.spaceID = id
	}
	return t, nil
}

// ReadTokenizer loads a llama2.c tokenizer.bin. vocabSize is the model's
// vocabulary size; a file with a different number of pieces is
// ErrVocabMismatch. vocabSize 0 accepts any size.
func ReadTokenizer(path string, vocabSize int) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read tokenizer: %w", err)
	}
	t, err := ParseTokenizer(data, vocabSize)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", path, err)
	}
	return t, nil
}

// ParseTokenizer decodes tokenizer.bin bytes: an int32 max token length,
// then per piece a float32 score, an int32 length and the piece's bytes.
// vocabSize is as in ReadTokenizer.
func ParseTokenizer(data []byte, vocabSize int) (*Tokenizer, error) {
	if len(data) < 4 {
		return nil, fmt.Errorf("%w: %d bytes, max token length needs 4", ErrTruncated, len(data))
	}
	maxLen := int32(binary.LittleEndian.Uint32(data))
	if maxLen < 0 {
		return nil, fmt.Errorf("%w: negative max token length %d", ErrBadTokenizer, maxLen)
	}
	rest := data[4:]
	var pieces []string
	var scores []float32
	for len(rest) > 0 {
		i := len(pieces)
		if len(rest) < 8 {
			return nil, fmt.Errorf("%w: piece %d header needs 8 bytes, %d left", ErrTruncated, i, len(rest))
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(rest))
		n := int32(binary.LittleEndian.Uint32(rest[4:]))
		if n < 0 || n > maxPieceLen {
			return nil, fmt.Errorf("%w: piece %d has length %d", ErrBadTokenizer, i, n)
		}
		rest = rest[8:]
		if int(n) > len(rest) {
			return nil, fmt.Errorf("%w: piece %d needs %d bytes, %d left", ErrTruncated, i, n, len(rest))
		}
		pieces = append(pieces, string(rest[:n]))
		scores = append(scores, score)
		rest = rest[n:]
	}
	if vocabSize > 0 && len(pieces) != vocabSize {
		return nil, fmt.Errorf("%w: tokenizer has %d pieces, model has %d", ErrVocabMismatch, len(pieces), vocabSize)
	}
	t, err := NewTokenizer(pieces, scores)
	if err != nil {
		return nil, err
	}
	t.maxTokenLen = max(t.maxTokenLen, int(maxLen))
	return t, nil
}

// WriteTo writes the tokenizer in llama2.c's tokenizer.bin format.
func (t *Tokenizer) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int64
	var buf []byte
	buf = binary.LittleEndian.AppendUint32(buf, uint32(t.maxTokenLen))
	for i, p := range t.pieces {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(t.scores[i]))
		buf = binary.LittleEndian.AppendUint32(buf, uint32(len(p)))
		buf = append(buf, p...)
		if len(buf) > 1<<15 {
			m, err := bw.Write(buf)
			n += int64(m)
			if err != nil {
				return n, fmt.Errorf("write tokenizer: %w", err)
			}
			buf = buf[:0]
		}
	}
	m, err := bw.Write(buf)
	n += int64(m)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return n, fmt.Errorf("write tokenizer: %w", err)
	}
	return n, nil
}

// VocabSize is the number of pieces.
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// Piece returns token id's piece as stored, or "" for an unknown id.
func (t *Tokenizer) Piece(id int) string {
	if id < 0 || id >= len(t.pieces) {
		return ""
	}
	return t.pieces[id]
}

// byteToken is the byte-fallback token for b, or <unk> when the vocabulary
// has no byte tokens.
func (t *Tokenizer) byteToken(b byte) int {
	id := byteTokenBase + int(b)
	if id >= len(t.pieces) {
		return TokenUnk
	}
	return id
}

// Encode turns text into token ids exactly as llama2.c's run.c encode does:
// optional BOS, sentencepiece's dummy " " prefix for non-empty text, one
// piece per UTF-8 code point (at most 4 bytes, falling back to byte tokens
// for unknown ones), then repeatedly merging the adjacent pair whose merged
// piece scores highest (the leftmost on ties), then optional EOS. Any bytes,
// valid UTF-8 or not, are accepted.
func (t *Tokenizer) Encode(text string, bos, eos bool) []int {
	toks := make([]int, 0, len(text)+3)
	if bos {
		toks = append(toks, TokenBOS)
	}
	if text != "" {
		if t.spaceID >= 0 {
			toks = append(toks, t.spaceID)
		} else {
			toks = append(toks, t.byteToken(' '))
		}
	}
	for i := 0; i < len(text); {
		j := i + 1
		for j < len(text) && text[j]&0xC0 == 0x80 && j-i < 4 {
			j++
		}
		if id, ok := t.lookup[text[i:j]]; ok {
			toks = append(toks, id)
		} else {
			for k := i; k < j; k++ {
				toks = append(toks, t.byteToken(text[k]))
			}
		}
		i = j
	}
	toks = t.merge(toks)
	if eos {
		toks = append(toks, TokenEOS)
	}
	return toks
}

// mergeCand is a possible merge of the nodes left and right.
type mergeCand struct {
	score       float32
	left, right int
	id          int
	genL, genR  uint32
}

type mergeHeap []mergeCand

func (h mergeHeap) Len() int { return len(h) }
func (h mergeHeap) Less(i, j int) bool {
	if h[i].score != h[j].score {
		return h[i].score > h[j].score
	}
	return h[i].left < h[j].left
}
func (h mergeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *mergeHeap) Push(x any)   { *h = append(*h, x.(mergeCand)) }
func (h *mergeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// merge applies run.c's merge loop in O(n log n): tokens form a linked list
// and candidate pairs sit in a heap ordered by score, then by position, the
// same choice run.c's rescans make. Nodes keep their original index, which
// preserves their order, and a generation count voids stale candidates.
func (t *Tokenizer) merge(toks []int) []int {
	n := len(toks)
	if n < 2 {
		return toks
	}
	next := make([]int, n)
	prev := make([]int, n)
	gen := make([]uint32, n)
	alive := make([]bool, n)
	for i := range toks {
		next[i], prev[i], alive[i] = i+1, i-1, true
	}
	next[n-1] = -1
	h := make(mergeHeap, 0, n)
	var buf []byte
	consider := func(l, r int) {
		if l < 0 || r < 0 {
			return
		}
		buf = append(append(buf[:0], t.Piece(toks[l])...), t.Piece(toks[r])...)
		id, ok := t.lookup[string(buf)]
		if !ok || !(t.scores[id] > mergeFloor) {
			return
		}
		heap.Push(&h, mergeCand{score: t.scores[id], left: l, right: r, id: id, genL: gen[l], genR: gen[r]})
	}
	for i := 0; i+1 < n; i++ {
		consider(i, i+1)
	}
	for h.Len() > 0 {
		c := heap.Pop(&h).(mergeCand)
		l, r := c.left, c.right
		if !alive[l] || !alive[r] || next[l] != r || gen[l] != c.genL || gen[r] != c.genR {
			continue
		}
		toks[l] = c.id
		gen[l]++
		alive[r] = false
		next[l] = next[r]
		if next[r] >= 0 {
			prev[next[r]] = l
		}
		consider(prev[l], l)
		consider(l, next[l])
	}
	out := toks[:0]
	for i := 0; i >= 0; i = next[i] {
		out = append(out, toks[i])
	}
	return out
}

// Decode returns the text of token following prev, as run.c's decode does:
// after BOS a leading space is dropped (sentencepiece's dummy prefix), and
// byte pieces like "<0x0A>" become that raw byte. The result may be part of
// a UTF-8 sequence (or invalid UTF-8); unknown ids decode to "".
func (t *Tokenizer) Decode(prev, token int) string {
	piece := t.Piece(token)
	if prev == TokenBOS && len(piece) > 0 && piece[0] == ' ' {
		piece = piece[1:]
	}
	if b, ok := parseBytePiece(piece); ok {
		return string([]byte{b})
	}
	return piece
}

// parseBytePiece recognises what run.c's sscanf(piece, "<0x%02hhX>") does:
// "<0x" followed by one or two hex digits.
func parseBytePiece(p string) (byte, bool) {
	if len(p) < 4 || p[:3] != "<0x" {
		return 0, false
	}
	v, ok := hexVal(p[3])
	if !ok {
		return 0, false
	}
	if len(p) > 4 {
		if d, ok := hexVal(p[4]); ok {
			v = v<<4 | d
		}
	}
	return v, true
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
