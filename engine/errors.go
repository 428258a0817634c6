package engine

import (
	"errors"

	"github.com/shoal-dev/shoal/scheduler"
)

// Errors the engine returns, wrapped with context; test with errors.Is.
var (
	// ErrBadHeader means a checkpoint header holds impossible shapes.
	ErrBadHeader = errors.New("invalid checkpoint header")
	// ErrTruncated means a file ends before the data its header announces.
	ErrTruncated = errors.New("file truncated")
	// ErrSizeMismatch means a checkpoint is larger than its header implies,
	// so the header does not describe this file.
	ErrSizeMismatch = errors.New("checkpoint size does not match its header")
	// ErrBadTokenizer means a tokenizer file is malformed.
	ErrBadTokenizer = errors.New("invalid tokenizer")
	// ErrVocabMismatch means the tokenizer's vocabulary size differs from
	// the model's.
	ErrVocabMismatch = errors.New("tokenizer vocabulary size does not match the model")
	// ErrInvalidConfig means a Config or GenOptions field is out of range;
	// the message names the field.
	ErrInvalidConfig = errors.New("invalid engine config")
	// ErrPromptTooLong means a prompt has more tokens than the model's
	// context (seq_len). It is scheduler.ErrPromptTooLong, which callers
	// test for whatever the backend.
	ErrPromptTooLong = scheduler.ErrPromptTooLong
	// ErrBadGGUF means a GGUF file is malformed.
	ErrBadGGUF = errors.New("invalid GGUF file")
	// ErrUnsupported means a well-formed model uses something the engine
	// does not implement (another architecture, tensor type or tokenizer).
	ErrUnsupported = errors.New("unsupported model")
	// ErrClosed means the backend was closed before the task finished.
	ErrClosed = errors.New("engine closed")
)
