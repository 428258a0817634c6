package consensus

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ClusterTLS is the mutual-TLS configuration Raft uses (see clusterTLS),
// for other node-to-node services keyed by the same secret (the peer
// plane): whoever presents its certificate holds the secret.
func ClusterTLS(secret []byte) (*tls.Config, error) { return clusterTLS(secret) }

// clusterTLS builds the mutual-TLS configuration of Raft connections from
// the cluster's shared secret. Every server derives the same Ed25519 key
// from it and presents a self-signed certificate for that key; a peer is
// accepted when its certificate carries the same public key. No CA, no
// files to distribute: whoever holds the secret is a member, and nobody
// else can read the log or send RPCs (hashicorp/raft's own transport has
// neither authentication nor encryption).
func clusterTLS(secret []byte) (*tls.Config, error) {
	seed := sha256.Sum256(append([]byte("shoal-raft-tls\x00"), secret...))
	priv := ed25519.NewKeyFromSeed(seed[:])
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("raft tls certificate: %w", err)
	}
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("raft tls: peer sent no certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return fmt.Errorf("raft tls: peer certificate: %w", err)
		}
		// The key is all that matters: the handshake's CertificateVerify,
		// which TLS checks against it, proves the peer holds its private
		// half, i.e. the secret.
		if k, ok := leaf.PublicKey.(ed25519.PublicKey); !ok || !bytes.Equal(k, pub) {
			return errors.New("raft tls: peer holds another cluster secret")
		}
		return nil
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.RequireAnyClientCert,
		// The chain is checked by VerifyPeerCertificate against the
		// derived key, not against a CA or a host name.
		InsecureSkipVerify:    true, //nolint:gosec // verified by VerifyPeerCertificate
		VerifyPeerCertificate: verify,
		ServerName:            "shoal-raft",
	}, nil
}
