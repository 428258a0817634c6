package consensus

import (
	"errors"
	"fmt"
	"slices"
)

// MaxRememberedWrites is how many Once outcomes the state keeps. A retry
// arrives within its write's deadline (seconds), long before this many other
// writes pass; the bound keeps the state, and every snapshot, small.
const MaxRememberedWrites = 1024

// maxWriteIDLen bounds a Once ID.
const maxWriteIDLen = 64

// ClusterSecretLen is the length of the secret SetClusterSecret stores.
const ClusterSecretLen = 32

// WriteRecord is the remembered outcome of one Once command.
type WriteRecord struct {
	// ID is the write's ID as the proposer chose it.
	ID string `json:"id"`
	// Err is the domain error's text when the write failed; empty when it
	// applied.
	Err string `json:"err,omitempty"`
}

// ErrEarlierAttemptFailed is returned for a Once whose ID was already
// applied and failed; the message says why.
var ErrEarlierAttemptFailed = errors.New("an earlier attempt of this write failed")

// Once carries another command with an ID chosen by the proposer, which
// keeps it for every retry of the same write. The FSM applies the first
// entry with an ID and answers every later one with the first one's outcome
// without applying it, so a write retried after a leader died (committed or
// not, the proposer cannot tell) takes effect exactly once.
type Once struct {
	// ID names the write; unique per write, e.g. 16 random bytes in hex.
	ID string `json:"id"`
	// Entry is the command, as EncodeCommand writes it.
	Entry []byte `json:"entry"`
}

// NewOnce wraps cmd with id.
func NewOnce(id string, cmd Command) (Once, error) {
	entry, err := EncodeCommand(cmd)
	if err != nil {
		return Once{}, err
	}
	return Once{ID: id, Entry: entry}, nil
}

// Type returns OnceType.
func (Once) Type() CommandType { return OnceType }

// Validate checks the ID and the wrapped command, which must not be another
// Once.
func (c Once) Validate() error {
	if err := validName("id", c.ID); err != nil {
		return err
	}
	if len(c.ID) > maxWriteIDLen {
		return invalid("id", "must be at most %d bytes", maxWriteIDLen)
	}
	inner, err := c.Command()
	if err != nil {
		return invalid("entry", "%v", err)
	}
	return inner.Validate()
}

// Command decodes the wrapped command.
func (c Once) Command() (Command, error) {
	inner, err := DecodeCommand(c.Entry)
	if err != nil {
		return nil, err
	}
	if inner.Type() == OnceType {
		return nil, errors.New("a Once cannot wrap a Once")
	}
	return inner, nil
}

// apply is unused: the FSM handles Once itself (applyOnce), since it must
// record the ID even when the wrapped command fails.
func (c Once) apply(*State) error {
	return errors.New("consensus: Once is applied by the FSM")
}

// seenWrite returns the remembered outcome of id.
func (s *State) seenWrite(id string) (WriteRecord, bool) {
	for i := len(s.Writes) - 1; i >= 0; i-- {
		if s.Writes[i].ID == id {
			return s.Writes[i], true
		}
	}
	return WriteRecord{}, false
}

// rememberWrite appends rec, dropping the oldest beyond MaxRememberedWrites.
// It copies: the slice is shared with published states.
func (s *State) rememberWrite(rec WriteRecord) {
	keep := s.Writes
	if len(keep) >= MaxRememberedWrites {
		keep = keep[len(keep)-MaxRememberedWrites+1:]
	}
	next := make([]WriteRecord, 0, len(keep)+1)
	next = append(next, keep...)
	s.Writes = append(next, rec)
}

// applyOnce applies a Once: a known ID is answered with its outcome, else
// the wrapped command is applied and its outcome remembered either way.
func (f *fsm) applyOnce(index uint64, c Once) any {
	cur := f.state.Load()
	if err := validName("id", c.ID); err != nil || len(c.ID) > maxWriteIDLen {
		// Only a buggy proposer gets here (Store.Apply validates); such an
		// ID is not worth remembering.
		next := *cur
		next.Index = index
		f.state.Store(&next)
		if err == nil {
			err = invalid("id", "must be at most %d bytes", maxWriteIDLen)
		}
		return err
	}
	if rec, ok := cur.seenWrite(c.ID); ok {
		next := *cur
		next.Index = index
		f.state.Store(&next)
		if rec.Err != "" {
			return fmt.Errorf("%w: %s", ErrEarlierAttemptFailed, rec.Err)
		}
		return nil
	}
	inner, err := c.Command()
	if err == nil {
		err = inner.Validate()
	}
	next := *cur
	next.Index = index
	if err == nil {
		err = inner.apply(&next)
	}
	if err != nil {
		// next may hold half-made changes; keep only the index and the
		// record.
		next = *cur
		next.Index = index
		next.rememberWrite(WriteRecord{ID: c.ID, Err: err.Error()})
		f.state.Store(&next)
		return err
	}
	next.rememberWrite(WriteRecord{ID: c.ID})
	f.state.Store(&next)
	f.onChange()
	return nil
}

// SetClusterSecret stores the secret nodes sign node-to-node requests with
// when the cluster has no gossip key. The first one wins: a secret, once
// set, never changes, so every node keeps verifying what the others sign.
type SetClusterSecret struct {
	// Secret is ClusterSecretLen random bytes.
	Secret []byte `json:"secret"`
}

// Type returns SetClusterSecretType.
func (SetClusterSecret) Type() CommandType { return SetClusterSecretType }

// Validate checks the secret's length.
func (c SetClusterSecret) Validate() error {
	if len(c.Secret) != ClusterSecretLen {
		return invalid("secret", "must be %d bytes", ClusterSecretLen)
	}
	return nil
}

func (c SetClusterSecret) apply(st *State) error {
	if st.ClusterSecret == nil {
		st.ClusterSecret = slices.Clone(c.Secret)
	}
	return nil
}
