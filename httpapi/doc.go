// Package httpapi is the inference HTTP API of a node: it decodes and
// validates OpenAI-shaped requests, admits them (through a Limiter), answers
// from the response cache, routes them here or to a peer, runs them on the
// local scheduler and writes JSON or server-sent events, with every failure
// as an OpenAI-style error. Its collaborators are small interfaces
// (deps.go) that the node wires.
package httpapi
