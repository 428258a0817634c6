// Package chaos holds the chaos suite: it starts real shoal processes, each in
// a network namespace of its own, injects faults (whole-cluster restarts,
// SIGKILL, SIGSTOP, partitions, packet loss, delay between nodes through
// userspace relays, a crash loop, a wiped data directory) while a bounded
// client load and a sequence of admin writes run, and prints one table of
// error rate, p99, time to full health and the porcupine verdict on the
// writes. The suite lives in the package's tests and runs only with
// SHOAL_CHAOS=1 (`make test-chaos`), as root.
package chaos
