// Package deploy holds shoal's deployment files: Prometheus scrape config,
// recording and alerting rules (prometheus/), the Grafana dashboard
// (grafana/), the docker-compose node config (docker/) and the Kubernetes
// manifests (kubernetes/). It has no code; its tests check that each file
// works with the real tool that reads it (promtool, a Prometheus server
// scraping a real node, docker compose) and references only metrics shoal
// exports.
package deploy
