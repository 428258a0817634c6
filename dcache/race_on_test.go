//go:build race

package dcache

const raceDetector = true
