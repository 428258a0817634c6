package consensus

import (
	"errors"
	"fmt"
)

var (
	// ErrNotLeader is returned by writes and membership changes on a node that
	// is not the leader while a leader is known. The caller forwards the request
	// to LeaderID/LeaderAddr; nothing was proposed.
	ErrNotLeader = errors.New("not the raft leader")

	// ErrNoLeader is returned by writes when this node is not the leader and no
	// leader is known (an election is in progress or there is no quorum).
	// Callers answer 503 and retry later; nothing was proposed.
	ErrNoLeader = errors.New("no raft leader")

	// ErrLeadershipLost is returned when this node lost leadership while a
	// write was in flight. The write may or may not have been committed.
	ErrLeadershipLost = errors.New("raft leadership lost while committing")

	// ErrShutdown is returned by every operation after Shutdown.
	ErrShutdown = errors.New("consensus store is shut down")

	// ErrInvalidCommand is wrapped by every error Validate returns (see
	// ValidationError); the admin API answers 400 for it.
	ErrInvalidCommand = errors.New("invalid command")

	// ErrBreakerConflict is the domain error of a BreakerTransition whose From
	// does not match the breaker's current state: another node got there first.
	ErrBreakerConflict = errors.New("breaker transition conflicts with current state")

	// ErrUnknownTenant is the domain error of a PutKey naming a tenant that is
	// not in the limit policy.
	ErrUnknownTenant = errors.New("unknown tenant")

	// ErrTenantInUse is the domain error of a DeleteTenant while API keys still
	// belong to that tenant.
	ErrTenantInUse = errors.New("tenant still has api keys")

	// ErrUnknownCommand is returned by DecodeCommand for a command type this
	// version does not know (and whose type lacks IgnoreUnknownTypeFlag).
	ErrUnknownCommand = errors.New("unknown command type")

	// ErrUnsupportedVersion is returned by DecodeCommand and snapshot restore
	// for a body version newer than this build understands.
	ErrUnsupportedVersion = errors.New("unsupported encoding version")
)

// ValidationError names the offending field (by its JSON name) of a command
// that failed Validate. It matches ErrInvalidCommand with errors.Is.
type ValidationError struct {
	// Field is the JSON path of the bad value, e.g. "max_size" or
	// `endpoints["/v1/infer"].rpm`.
	Field string
	// Msg says what the value must be, e.g. "must be between 1 and 4096".
	Msg string
}

// Error reports the field and the rule, e.g. "max_size must be between 1 and 4096".
func (e *ValidationError) Error() string { return e.Field + " " + e.Msg }

// Is makes errors.Is(err, ErrInvalidCommand) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidCommand }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// BreakerConflictError is the domain error returned when a BreakerTransition's
// From does not match the current state. It matches ErrBreakerConflict.
type BreakerConflictError struct {
	// Key is the breaker, "node/model".
	Key string
	// Want is the From the proposer expected.
	Want BreakerStatus
	// Have is the state the breaker is actually in.
	Have BreakerStatus
}

// Error reports the breaker and both states.
func (e *BreakerConflictError) Error() string {
	return fmt.Sprintf("breaker %s: transition from %q but state is %q", e.Key, e.Want, e.Have)
}

// Is makes errors.Is(err, ErrBreakerConflict) true.
func (e *BreakerConflictError) Is(target error) bool { return target == ErrBreakerConflict }
