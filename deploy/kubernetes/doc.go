// Package kubernetes holds shoal's Kubernetes manifests (apply with
// kubectl apply -f deploy/kubernetes/). It has no code; its tests decode
// every manifest strictly into the Kubernetes API types, so a misspelled
// field fails the build, and check that the objects fit together.
package kubernetes
