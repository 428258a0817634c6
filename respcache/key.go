package respcache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/shoal-dev/shoal/scheduler"
)

// Policy is what the client's Cache-Control allows.
type Policy struct {
	Lookup bool // no-cache skips the lookup
	Store  bool // no-store skips storing the answer
}

// ParsePolicy reads a Cache-Control request header.
func ParsePolicy(h string) Policy {
	p := Policy{Lookup: true, Store: true}
	for d := range strings.SplitSeq(strings.ToLower(h), ",") {
		switch strings.TrimSpace(d) {
		case "no-cache":
			p.Lookup = false
		case "no-store":
			p.Lookup, p.Store = false, false
		}
	}
	return p
}

// Values of cache.scope: who shares cached answers.
const (
	ScopeCluster = "cluster"
	ScopeTenant  = "tenant"
	ScopeKey     = "key"
)

// ScopeOf names the cache partition of a request (KeyInput.Scope), so a
// hit never tells a client what a client of another partition asked. mode
// is cache.scope ("" is tenant while auth is required, else cluster);
// keyHash is the hash of the client's API key ("" without one) and tenant
// its tenant ("" for a key without one, or one the policy does not know).
// Clients without a key share the anonymous scope; a key without a tenant
// is a tenant of its own.
func ScopeOf(mode string, authRequired bool, keyHash, tenant string) string {
	if mode == "" {
		mode = ScopeCluster
		if authRequired {
			mode = ScopeTenant
		}
	}
	switch {
	case mode == ScopeCluster:
		return ""
	case keyHash == "":
		return "anonymous"
	case mode == ScopeTenant && tenant != "":
		return "tenant:" + tenant
	}
	return "key:" + keyHash
}

// KeyInput is every part of a request that changes its answer.
type KeyInput struct {
	Model    string
	Endpoint scheduler.Endpoint
	Messages []scheduler.Message
	Prompts  []string
	Params   scheduler.Params
	// Scope partitions the cache: requests of different scopes never
	// share an answer ("" is the whole cluster).
	Scope string
	// Epoch is how many purges apply to the model's answers
	// (consensus.State.CacheEpoch): a purge moves it on, which puts every
	// answer keyed before out of reach, whatever the store still holds.
	// Keys of epoch 0 are those of nodes older than epochs.
	Epoch uint64
}

// normalSpaced reports whether s is ASCII whose only whitespace is single
// spaces between words: what strings.Fields and Join would give back
// unchanged (they allocate twice).
func normalSpaced(s string) bool {
	if s == "" {
		return true
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	prev := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' || (c == ' ' && prev == ' ') {
			return false
		}
		prev = c
	}
	return true
}

// normalizeText trims and collapses whitespace, so prompts that differ only
// in spacing share an entry; lowercasing is opt-in because it changes
// meaning for most models.
func normalizeText(s string, lower bool) string {
	if !normalSpaced(s) {
		s = strings.Join(strings.Fields(s), " ")
	}
	if lower {
		s = strings.ToLower(s)
	}
	return s
}

// Key returns the key of a deterministic request (temperature 0 or a fixed
// seed), over the model, the normalized prompt or messages and every
// parameter that changes the output; ok is false when the answer must not
// be cached.
func Key(in KeyInput, lower bool) (key string, ok bool) {
	p := in.Params
	if p.Temperature != 0 && p.Seed == nil {
		return "", false
	}
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	word := func(u uint64) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], u)
		h.Write(n[:])
	}
	num := func(f float64) { word(math.Float64bits(f)) }
	// v2: the seed is hashed as the integer it is (v1 went through float64,
	// so seeds above 2^53 could share a key).
	field("v2")
	field(in.Scope)
	field(in.Model)
	field(string(in.Endpoint))
	for _, m := range in.Messages {
		field(m.Role)
		field(normalizeText(m.Content, lower))
	}
	field("|")
	for _, pr := range in.Prompts {
		field(normalizeText(pr, lower))
	}
	num(float64(p.MaxTokens))
	num(p.Temperature)
	num(p.TopP)
	if p.Seed != nil {
		word(uint64(*p.Seed))
	} else {
		field("noseed")
	}
	for _, s := range p.Stop {
		field(s)
	}
	// On the stack, then one allocation for the string. The epoch is
	// appended rather than hashed, so an operator can tell keys apart.
	var sum [sha256.Size]byte
	var out [2*sha256.Size + 1 + 20]byte
	n := hex.Encode(out[:], h.Sum(sum[:0]))
	if in.Epoch > 0 {
		out[n] = '.'
		n += 1 + len(strconv.AppendUint(out[n+1:n+1], in.Epoch, 10))
	}
	return string(out[:n]), true
}
