package scheduler

import (
	"time"
)

// queue holds one model's waiting tasks in three priority FIFOs. It is not
// safe for concurrent use; modelQueue guards it.
type queue struct {
	levels [3][]*Task
	n      int
	// agingAfter promotes a low or normal task that has waited this long,
	// so sustained high-priority load slows lower levels but never parks
	// them forever.
	agingAfter time.Duration
}

func (q *queue) len() int { return q.n }

func (q *queue) push(t *Task) {
	p := t.req.Priority
	q.levels[p] = append(q.levels[p], t)
	q.n++
}

// pushFront puts a task back at the head of its level, for a continuous
// backend that had no room for it.
func (q *queue) pushFront(t *Task) {
	p := t.req.Priority
	q.levels[p] = append([]*Task{t}, q.levels[p]...)
	q.n++
}

// remove deletes t if it is still queued and reports whether it was.
func (q *queue) remove(t *Task) bool {
	p := t.req.Priority
	lv := q.levels[p]
	for i, x := range lv {
		if x == t {
			copy(lv[i:], lv[i+1:])
			lv[len(lv)-1] = nil
			q.levels[p] = lv[:len(lv)-1]
			q.n--
			return true
		}
	}
	return false
}

// oldest returns the enqueue time of the longest-waiting task.
func (q *queue) oldest() (time.Time, bool) {
	var t time.Time
	found := false
	for _, lv := range q.levels {
		if len(lv) > 0 && (!found || lv[0].enqueued.Before(t)) {
			t, found = lv[0].enqueued, true
		}
	}
	return t, found
}

// pop takes up to n tasks, highest priority first. Lower-level tasks that
// have waited past agingAfter may take up to a quarter of the batch (at least
// one place), so they progress without crowding out higher levels.
func (q *queue) pop(n int, now time.Time) []*Task {
	if n > q.n {
		n = q.n
	}
	aged := max(1, n/4)
	out := make([]*Task, 0, n)
	for len(out) < n {
		p, promoted := q.next(now, aged > 0)
		if promoted {
			aged--
		}
		out = append(out, q.levels[p][0])
		q.levels[p][0] = nil
		q.levels[p] = q.levels[p][1:]
		q.n--
	}
	return out
}

func (q *queue) next(now time.Time, allowAged bool) (Priority, bool) {
	top := PriorityHigh
	for top > PriorityLow && len(q.levels[top]) == 0 {
		top--
	}
	if allowAged && q.agingAfter > 0 {
		for p := PriorityLow; p < top; p++ {
			if lv := q.levels[p]; len(lv) > 0 && now.Sub(lv[0].enqueued) >= q.agingAfter {
				return p, true
			}
		}
	}
	if len(q.levels[top]) > 0 {
		return top, false
	}
	panic("scheduler: pop from empty queue")
}
