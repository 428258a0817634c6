// Package engine runs Llama-architecture models inside the node, in pure Go
// (assembly kernels where the CPU has them): a scheduler.ContinuousBackend
// over llama2.c or GGUF checkpoints. See DESIGN.md.
package engine
