package respcache

import (
	"strings"
	"testing"
)

// FuzzNormalizeText checks the no-copy path gives what Fields and Join
// give, for any text.
func FuzzNormalizeText(f *testing.F) {
	for _, s := range []string{"", "a", "a b", " a", "a ", "a  b", "a\tb", "a\nb", "A B", "é b", "a\u00a0b", "a\u2003b", "\xff x"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, lower bool) {
		want := strings.Join(strings.Fields(s), " ")
		if lower {
			want = strings.ToLower(want)
		}
		if got := normalizeText(s, lower); got != want {
			t.Fatalf("normalizeText(%q, %v) = %q, want %q", s, lower, got, want)
		}
	})
}
