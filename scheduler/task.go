package scheduler

import (
	"context"
	"sync"
	"time"
)

// Priority orders work inside one model's queue. Higher levels are batched
// first; a share of every batch is reserved so lower levels still progress.
type Priority int

// Priority levels, as Triton names them.
const (
	PriorityLow Priority = iota
	PriorityNormal
	PriorityHigh
)

// Endpoint says which API shape a request came in through.
type Endpoint string

// The API shapes a request can come through.
const (
	EndpointChat       Endpoint = "chat"
	EndpointCompletion Endpoint = "completions"
	EndpointInfer      Endpoint = "infer"
)

// Message is one chat turn.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Params are the generation parameters that change a request's output.
type Params struct {
	// MaxTokens bounds the completion length; 0 means the model's default.
	MaxTokens int
	// Temperature 0 means greedy (argmax) decoding.
	Temperature float64
	// TopP is nucleus sampling's probability mass; 0 or 1 disables it.
	TopP float64
	// Seed makes sampling reproducible; nil lets the backend choose.
	Seed *int64
	// Stop ends generation when any of these strings is produced; the stop
	// string itself is not part of the output.
	Stop []string
}

// Request is one unit of inference work, already validated by the HTTP layer.
type Request struct {
	ID       string
	Model    string
	Endpoint Endpoint
	// Prompt is the text to complete (completions, infer).
	Prompt string
	// Messages is the conversation (chat). Backends that need plain text use
	// PromptText.
	Messages []Message
	Params   Params
	Priority Priority
	Stream   bool
}

// PromptText renders the request as plain text for backends that take text:
// the prompt itself, or the chat turns as "role: content" lines followed by an
// open assistant turn.
func (r *Request) PromptText() string {
	if r.Endpoint != EndpointChat {
		return r.Prompt
	}
	n := 0
	for _, m := range r.Messages {
		n += len(m.Role) + len(m.Content) + 3
	}
	b := make([]byte, 0, n+len("assistant:"))
	for _, m := range r.Messages {
		b = append(b, m.Role...)
		b = append(b, ": "...)
		b = append(b, m.Content...)
		b = append(b, '\n')
	}
	b = append(b, "assistant:"...)
	return string(b)
}

// Result is what a backend produced for one task.
type Result struct {
	Text string
	// FinishReason is "stop" (end of sequence or a stop string) or "length"
	// (max tokens reached).
	FinishReason     string
	PromptTokens     int
	CompletionTokens int
}

// Task is one request inside a batch, as a backend sees it. Emit and Finish
// may be called from any goroutine; neither blocks on the client.
type Task struct {
	req      *Request
	ctx      context.Context
	enqueued time.Time

	mu     sync.Mutex
	chunks []string
	// notify and finished are made on first use, under mu: most tasks are
	// neither streamed (Next) nor waited for before they finish (a task run
	// on its caller's goroutine returns finished), and each is an
	// allocation.
	notify   chan struct{}
	done     bool
	result   Result
	err      error
	finished chan struct{}
	// alone backs the batch of one a task runs in when nothing is batched
	// with it, so that batch costs no allocation.
	alone [1]*Task
}

// NewTask makes a task for req whose lifetime is bound to ctx. The
// scheduler makes tasks on Submit; backends and their tests may make them
// directly.
func NewTask(ctx context.Context, req *Request) *Task {
	return &Task{req: req, ctx: ctx, enqueued: time.Now()}
}

// Context is cancelled when the client goes away or the deadline passes;
// backends stop working on the task then.
func (t *Task) Context() context.Context { return t.ctx }

// Request returns the task's request. Backends must not modify it.
func (t *Task) Request() *Request { return t.req }

// Emit streams one chunk of output (usually one token's text) to the client.
// Chunks are buffered, so a slow client never stalls a batch.
func (t *Task) Emit(text string) {
	// Only a streamed request reads chunks (Next); any other's answer is
	// its Result. Buffering every token of those anyway cost a lock per
	// token and an allocation per doubling of the buffer (5 for 16 tokens).
	if text == "" || !t.req.Stream {
		return
	}
	t.mu.Lock()
	if t.done {
		t.mu.Unlock()
		return
	}
	t.chunks = append(t.chunks, text)
	notify := t.notify
	t.mu.Unlock()
	wake(notify)
}

// wake signals a reader waiting in Next, if there is one; nil is no reader.
func wake(notify chan struct{}) {
	select {
	case notify <- struct{}{}:
	default:
	}
}

// Finish records the task's outcome. Only the first call counts, so the
// scheduler can finish tasks a backend forgot without racing it.
func (t *Task) Finish(res Result, err error) {
	t.mu.Lock()
	if t.done {
		t.mu.Unlock()
		return
	}
	t.done = true
	t.result, t.err = res, err
	finished, notify := t.finished, t.notify
	t.mu.Unlock()
	if finished != nil {
		close(finished)
	}
	wake(notify)
}

// Done is closed once the task has finished.
func (t *Task) Done() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished == nil {
		t.finished = make(chan struct{})
		if t.done {
			close(t.finished)
		}
	}
	return t.finished
}

// Wait blocks until the task has finished and returns its outcome. A task
// always finishes, with its context at the latest.
func (t *Task) Wait() (Result, error) {
	t.mu.Lock()
	if t.done {
		defer t.mu.Unlock()
		return t.result, t.err
	}
	if t.finished == nil {
		t.finished = make(chan struct{})
	}
	finished := t.finished
	t.mu.Unlock()
	<-finished
	return t.Outcome()
}

// Next blocks until there is streamed output, the task finishes, or ctx ends.
// It returns the chunks produced since the last call; finished reports that
// no more will come, after which Outcome holds the result.
func (t *Task) Next(ctx context.Context) (chunks []string, finished bool, err error) {
	for {
		t.mu.Lock()
		chunks, t.chunks = t.chunks, nil
		finished = t.done
		if len(chunks) > 0 || finished {
			t.mu.Unlock()
			return chunks, finished, nil
		}
		if t.notify == nil {
			t.notify = make(chan struct{}, 1)
		}
		notify := t.notify
		t.mu.Unlock()
		select {
		case <-notify:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// Outcome returns the result and error given to Finish. It is only
// meaningful after Done is closed.
func (t *Task) Outcome() (Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.result, t.err
}

// Backend runs batches of tasks for one model.
//
// The scheduler calls Run from up to Slots goroutines at once, each with its
// own batch. Run must call Finish on every task of its batch before it
// returns; the scheduler finishes any it missed with an error. A task whose
// Context ends should be finished promptly with the context's error.
type Backend interface {
	Run(ctx context.Context, batch []*Task)
	// Close releases the backend's resources once no Run is in flight.
	Close() error
}

// ContinuousBackend keeps a running set of sequences that advance together
// step by step; tasks join between steps and leave as soon as they finish,
// so the scheduler hands over tasks one by one instead of in batches.
type ContinuousBackend interface {
	// Admit offers one task to the running set. It returns false, without
	// keeping the task, when there is no room now (sequence or memory budget
	// full); the scheduler then keeps it queued and tries again after Room.
	// An admitted task is finished by the backend.
	Admit(t *Task) bool
	// Room receives a value whenever a sequence leaves and room may exist.
	Room() <-chan struct{}
	// Active is the number of sequences running now.
	Active() int
	// Close stops the step loop, finishing running tasks with an error.
	Close() error
}
