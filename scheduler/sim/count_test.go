package sim

import (
	"hash/fnv"
	"strings"
	"testing"
)

// The allocation-free hash and token count are the ones they replace: a sim model's answers
// to a given prompt are the same across versions.
func FuzzCountTokensAndHash(f *testing.F) {
	for _, s := range []string{"", " ", "a b", "user: hi\nassistant:", "\u00a0x\u0085y\u2003", "\xff \xfe", "tabs\tand\vform\ffeeds\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := countTokens(s), len(strings.Fields(s)); got != want {
			t.Fatalf("countTokens(%q) = %d, strings.Fields has %d", s, got, want)
		}
		h := fnv.New64a()
		h.Write([]byte("model"))
		h.Write([]byte{0})
		h.Write([]byte(s))
		if got, want := fnv64a(fnv64a(fnv64a(fnvOffset64, "model"), "\x00"), s), h.Sum64(); got != want {
			t.Fatalf("fnv64a(%q) = %x, hash/fnv says %x", s, got, want)
		}
	})
}
