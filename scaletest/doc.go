// Package scaletest holds the real-process scale test: it builds the shoal
// binary, starts 20 `shoal node start` processes on loopback, each serving
// one sim model, drives open-loop (Poisson) requests at every node's HTTP
// port, and checks the routing p99 and the load messages per node per
// second against clustersim's prediction for the same workload. It lives in
// the package's tests and runs only with SHOAL_SCALE_TEST=1
// (`make test-scale`).
package scaletest
