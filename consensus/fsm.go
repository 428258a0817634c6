package consensus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// snapshotVersion is the version of the snapshot encoding this build writes
// and the newest it restores.
const snapshotVersion = 1

// snapshotFile is the JSON document a snapshot holds.
type snapshotFile struct {
	Version int    `json:"version"`
	State   *State `json:"state"`
}

// fsm is the raft.FSM holding State. Raft calls Apply, Snapshot and Restore
// from one goroutine, never concurrently with each other; Persist runs
// concurrently with later Applies. Every published *State is immutable
// (copy-on-write), which makes Snapshot a pointer load and lets readers use
// current() without locks.
type fsm struct {
	state    atomic.Pointer[State]
	onChange func()
	logger   *slog.Logger
}

var _ raft.FSM = (*fsm)(nil)

// newFSM returns an FSM with the empty state; onChange runs after every
// change on raft's FSM goroutine and must not block.
func newFSM(logger *slog.Logger, onChange func()) *fsm {
	f := &fsm{onChange: onChange, logger: logger}
	f.state.Store(newState())
	return f
}

// current returns the latest published state.
func (f *fsm) current() *State { return f.state.Load() }

// Apply applies one committed command. It returns nil or the command's domain
// error (the ApplyFuture's response). A committed entry that does not decode
// means the cluster runs code that cannot read its own log: continuing would
// let this node's state diverge silently, so it panics, as hashicorp's FSMs
// do. Raft only hands LogCommand entries to Apply.
func (f *fsm) Apply(l *raft.Log) any {
	return f.applyEntry(l.Index, l.Data)
}

func (f *fsm) applyEntry(index uint64, data []byte) any {
	resp, err := f.tryApplyEntry(index, data)
	if err != nil {
		panic(fmt.Sprintf("consensus: committed log entry %d cannot be decoded: %v", index, err))
	}
	return resp
}

// tryApplyEntry is applyEntry returning, instead of panicking on, an entry
// that does not decode; the state is then left unchanged.
func (f *fsm) tryApplyEntry(index uint64, data []byte) (any, error) {
	cmd, err := DecodeCommand(data)
	if err != nil {
		if errors.Is(err, ErrUnknownCommand) && CommandType(data[0])&IgnoreUnknownTypeFlag != 0 {
			f.logger.Warn("skipping unknown command type marked ignorable", "type", data[0], "index", index)
			next := *f.state.Load()
			next.Index = index
			f.state.Store(&next)
			return nil, nil
		}
		return nil, err
	}
	return f.applyCommand(index, cmd), nil
}

func (f *fsm) applyCommand(index uint64, cmd Command) any {
	if o, ok := cmd.(Once); ok {
		return f.applyOnce(index, o)
	}
	cur := f.state.Load()
	next := *cur
	next.Index = index
	// Validated again here so that no proposer, however buggy, can put a
	// value into the state that the nodes' hot paths would choke on.
	if err := cmd.Validate(); err != nil {
		f.state.Store(&next)
		return err
	}
	if err := cmd.apply(&next); err != nil {
		// next may hold half-made changes; publish only the index.
		idx := *cur
		idx.Index = index
		f.state.Store(&idx)
		return err
	}
	f.state.Store(&next)
	f.onChange()
	return nil
}

// Snapshot captures the current state; the state is immutable, so this is a
// pointer copy and never blocks Apply.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.state.Load()}, nil
}

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := decodeSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.state.Store(st)
	f.onChange()
	return nil
}

// decodeSnapshot reads a snapshot written by fsmSnapshot.Persist. It returns
// an error, never panics, on any input.
func decodeSnapshot(r io.Reader) (*State, error) {
	var file snapshotFile
	dec := json.NewDecoder(r)
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if file.Version < 1 || file.Version > snapshotVersion {
		return nil, fmt.Errorf("snapshot version %d: %w", file.Version, ErrUnsupportedVersion)
	}
	if file.State == nil {
		return nil, errors.New("decode snapshot: no state")
	}
	file.State.normalize()
	return file.State, nil
}

// fsmSnapshot is one point-in-time state being written out.
type fsmSnapshot struct {
	state *State
}

// Persist writes the snapshot as JSON; on any error it cancels the sink so
// raft discards the partial snapshot.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(snapshotFile{Version: snapshotVersion, State: s.state}); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: close: %w", err)
	}
	return nil
}

// Release has nothing to free: the state is shared and immutable.
func (s *fsmSnapshot) Release() {}
