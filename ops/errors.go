package ops

import "errors"

// Errors node code returns for the admin API (package ops/admin) to map to
// statuses. They live here, beside health and metrics, so code that must not
// import the admin server can still return them.
var (
	// ErrAdminNotFound answers 404.
	ErrAdminNotFound = errors.New("not found")
	// ErrAdminBadRequest answers 400.
	ErrAdminBadRequest = errors.New("bad request")
)
