// Package kubernetes holds shoal's Kubernetes manifests. It has no code;
// its tests decode every manifest strictly into the Kubernetes API types, so
// a misspelled field fails the build, and check that the objects fit
// together.
//
// Install: the namespace, then the secrets, generated on the spot so that
// no token or key is ever a public default, then the rest:
//
//	kubectl apply -f deploy/kubernetes/namespace.yaml
//	kubectl -n shoal create secret generic shoal-secrets \
//	  --from-literal=admin-token="$(openssl rand -hex 32)" \
//	  --from-literal=gossip-key="$(openssl rand -base64 32)"
//	kubectl apply -f deploy/kubernetes/
//
// admin-token is the bearer token of /admin/v1 (SHOAL_ADMIN_TOKEN; shoal
// top, shoal tune and the preStop `shoal node leave` use it); read it back
// with
//
//	kubectl -n shoal get secret shoal-secrets -o jsonpath='{.data.admin-token}' | base64 -d
//
// gossip-key is the base64 AES key that encrypts gossip and keys Raft's
// mutual TLS (SHOAL_GOSSIP_KEY). Pods do not start until the secret exists.
package kubernetes
