//go:build race

package node

// raceDetector: tests that drive many requests scale down under the race detector.
const raceDetector = true
