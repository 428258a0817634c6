# Configuration shared by the three nodes of docker-compose.yml (mounted at
# /etc/shoal/cluster.hcl). Per-node settings (name, data dir, addresses,
# join, bootstrap_expect) come from each service's command flags, which win
# over this file. The admin token comes from SHOAL_ADMIN_TOKEN.

http {
  addr = "0.0.0.0:8080"
  # Shorter than the 30s docker stop grace period of docker-compose.yml's
  # stop_grace_period, so a drain completes before SIGKILL.
  drain_timeout = "20s"
}

gossip {
  addr = "0.0.0.0:7946"
}

raft {
  addr             = "0.0.0.0:7947"
  bootstrap_expect = 3
}

cache {
  addr        = "0.0.0.0:3320"
  backend     = "olric"
  default_ttl = "2h"
}

batching {
  max_size      = 64
  flush_timeout = "10ms"
  max_queue     = 1000
}

rate_limit {
  rpm = 6000
}

router {
  policy = "least-queued"
}

# A fast model: batches of 64 cost about 3x a batch of 1.
model "sim-fast" {
  backend = "sim"
  sim {
    base               = "20ms"
    per_item           = "8ms"
    exponent           = 0.5
    token_interval     = "2ms"
    default_max_tokens = 16
  }
}

# A slower, larger model: costlier batches and tokens, so queues and batching
# show under load.
model "sim-large" {
  backend       = "sim"
  max_size      = 32
  flush_timeout = "25ms"
  sim {
    base               = "80ms"
    per_item           = "20ms"
    exponent           = 0.7
    token_interval     = "10ms"
    default_max_tokens = 32
  }
}
