# cluster.example.hcl: every key shoal reads, with its default and what it does.
# Start a node with it:  shoal node start --config cluster.example.hcl
# Precedence, lowest to highest: built-in defaults < this file < environment variables < flags.
# Durations are Go durations: "10ms", "30s", "2h".

# Name of this node in gossip, Raft and the X-Shoal-Node header. Default: the host name.
node_name = "node-1"

# Raft log and snapshots, and generated models, live here. Default: /var/lib/shoal.
data_dir = "/var/lib/shoal"

# Gossip addresses of existing members to join at start; retried with backoff until
# join_timeout. Same as repeating --join. Default: none (start alone or wait to be joined).
join = ["10.0.0.2:7946"]

# How long the start-up join keeps retrying. Default: 2m.
join_timeout = "2m"

http {
  # Client-facing address: the OpenAI-compatible API, /v1/infer, the Open Inference Protocol
  # (KServe v2) under /v2, /health, /metrics, /admin/v1, /ui/, /debug/pprof (admin token, as
  # /admin/v1). Default 0.0.0.0:8080; with --dev 127.0.0.1:8080, because its admin API is open.
  addr = "0.0.0.0:8080"
  # Largest request body, after gzip/zstd decompression; larger bodies get 413. Default 1 MiB.
  max_body_bytes = 1048576
  # Slow-client protection. Defaults: 10s, 30s, 2m.
  read_header_timeout = "10s"
  read_timeout        = "30s"
  idle_timeout        = "2m"
  # Longest a request may take, queueing plus running; X-Shoal-Timeout may ask for less. Default 60s.
  request_timeout = "60s"
  # On SIGTERM, how long to let queued and running requests finish. Default 30s.
  drain_timeout = "30s"
}

gossip {
  # memberlist address (TCP and UDP). Default 0.0.0.0:7946.
  addr = "0.0.0.0:7946"
  # Address other nodes use to reach this one, if not the bind address (NAT, containers). Default: derived.
  advertise = ""
  # Base64 AES key (16, 24 or 32 bytes) that encrypts gossip, e.g. from `openssl rand -base64 32`.
  # Every node needs the same key; a node with another key cannot join. It is the cluster's
  # shared secret: Raft and the peer plane (node-to-node writes, on the Raft port) then run over
  # mutual TLS with a key derived from it, forwarded requests are signed with a key derived from
  # it, the cache's own memberlist (cache.addr port + 2) is encrypted with it, and the cache's
  # Olric port requires a password derived from it. Default: none (all cluster ports plaintext;
  # the peer plane then serves members' addresses only).
  encrypt_key = ""
}

raft {
  # Raft TCP address. Default 0.0.0.0:7947.
  addr = "0.0.0.0:7947"
  # Address other nodes dial for Raft, if not the bind address. Default: derived.
  advertise = ""
  # Bootstrap the cluster once this many nodes see each other (as Consul's bootstrap_expect);
  # never twice. 0 means join an existing cluster only; --dev uses 1. Default 0.
  bootstrap_expect = 3
  # Raft voters at most; further nodes join as non-voters. Default 5.
  max_voters = 5
  # A node that stays failed this long is removed from Raft, never below a quorum of
  # bootstrap_expect. Default 5m.
  dead_server_timeout = "5m"
}

cache {
  # Olric (embedded distributed cache) protocol address. Default 0.0.0.0:3320.
  addr = "0.0.0.0:3320"
  # Olric's own memberlist address. Default: the cache port + 2 (3322).
  memberlist_addr = ""
  # "olric" (shared by the cluster), "local" (in-process LRU, single node) or "off". Default olric.
  # Rate-limit counters live here too: with local or off every node counts its own, so each
  # admits a whole limit (logged at start, and /health shows ratelimit "per-node").
  backend = "olric"
  # How long a cached response lives. Default 2h. Once `shoal admin cache settings set` has put
  # cache settings into Raft, those apply on every node instead of default_ttl and lowercase.
  default_ttl = "2h"
  # Memory bound of the local backend, in bytes. Default 256 MiB.
  max_bytes = 268435456
  # Fold prompts to lower case before keying (more hits, but changes meaning). Default false.
  lowercase = false
  # A cache lookup never takes longer than this; past it the request runs uncached. Default 50ms.
  lookup_timeout = "50ms"
  # With the olric backend: how long a node answers a hit it got from the shared cache again from
  # its own memory, without asking the key's owner (a hot key then costs its owner one get per
  # node per near_ttl, and a hit here no round trip). Never past the answer's own TTL; a purge
  # (`shoal admin cache purge`) ends it on every node once the node applies the purge from Raft
  # (milliseconds; a node cut off from Raft keeps near answers up to near_ttl). 0s: off.
  # Default 1s, at most 1m.
  near_ttl = "1s"
  # Who shares cached answers (a hit tells the client someone in its scope asked the same):
  # "cluster", "tenant" (an API key's tenant, or the key itself when it has none) or "key".
  # Clients without an API key share one scope. Default "": tenant when auth.required, else cluster.
  scope = ""
}

batching {
  # Most requests in one batch. Default 64.
  max_size = 64
  # How long a batch waits for more requests after its first one. Default 10ms.
  flush_timeout = "10ms"
  # Waiting requests per model; beyond it requests get 429. Low priority may fill half,
  # normal 90%, high all of it. Default 1000.
  max_queue = 1000
  # Batches a model runs at once; 0 means one per GPU, or 1 on a CPU-only node. Default 0.
  max_concurrent_batches = 0
}

rate_limit {
  # Default requests per minute per client, cluster-wide. Default 1000 (100000 with --dev). A
  # client is its API key when the key is registered, else the TCP peer's address (an IPv6
  # client by its /64); X-Forwarded-For is not read, and a made-up key spends its address's
  # budget. It seeds a new cluster's policy in Raft once; afterwards the replicated policy
  # applies (change it with `shoal admin limits set`) and a node whose file differs says so in
  # its log at start.
  rpm = 1000
}

circuit_breaker {
  # Consecutive backend failures that open a breaker. Default 3.
  failure_threshold = 3
  # How long a breaker stays open before a half-open probe. Default 30s.
  timeout = "30s"
}

admin {
  # Bearer token for /admin/v1 (or SHOAL_ADMIN_TOKEN). Empty allows no admin access,
  # except in --dev, which runs open and says so in its log. Nodes never use it between
  # themselves (they use the peer plane), so a cluster works without one.
  token = ""
}

auth {
  # Reject requests whose API key is not registered through the admin API. Default false:
  # an unknown key is then ignored, and the request is limited by its client address. Like
  # rate_limit.rpm it seeds Raft once; a differing file is logged at start and
  # `shoal admin limits set` changes it.
  required = false
}

router {
  # How a node picks the node that runs a request: "least-expected" (when one more request
  # would finish there: queued and running work over the node's measured batch cost, power of
  # two choices), "least-queued" (queued work per slot, power of two choices), "round-robin"
  # or "random". Default least-expected.
  policy = "least-expected"
  # How much a node that likely holds the prompt's prefix in its KV cache is preferred, 0 to 1:
  # a full hit discounts its expected completion by this share, so it wins while its expected
  # completion is under 1/(1-weight) times the best other node's (1.33 at 0.25). 0 turns
  # prefix-aware routing off (least-expected only). Default 0.25.
  prefix_weight = 0.25
}

gpu {
  # Capacity to advertise when nvidia-smi is absent. With nvidia-smi, detected values win.
  count     = 0
  memory_mb = 0
}

gc {
  # The Go garbage collector's heap goal is kept at or above this many bytes while the live
  # heap is small: a node serving cache hits keeps a few MiB live and would otherwise collect
  # dozens of times a second. Once GOGC's own goal is larger (a full cache, an engine model) it
  # applies unchanged, so this costs at most this much memory. GOMEMLIMIT still bounds the
  # heap; GOGC=off turns the floor off. 0 turns it off. Default 67108864 (64 MiB).
  heap_floor_bytes = 67108864
}

# One block per served model. The label is the model name clients send.
model "sim-fast" {
  # "sim" (deterministic stand-in for a GPU model server), "openai" (an OpenAI-compatible
  # upstream: vLLM, llama.cpp, Ollama, TGI), "triton" (a Triton / KServe v2 server) or
  # "engine" (the embedded transformer runtime).
  backend = "sim"
  # Per-model overrides of the batching block (0 or absent: use the batching block).
  max_size               = 0
  flush_timeout          = "10ms"
  max_concurrent_batches = 0
  sim {
    # A batch of n costs base + per_item * n^exponent. Defaults make a batch of 64 cost
    # about 3x a batch of 1: base 20ms, per_item 8ms, exponent 0.5.
    base     = "20ms"
    per_item = "2ms"
    exponent = 0.5
    # One token per interval, streamed. Default 2ms.
    token_interval = "5ms"
    # Tokens generated when a request sets no max_tokens. Default 16.
    default_max_tokens = 16
    # Spread of the batch cost: each batch's cost is multiplied by a lognormal factor of mean 1
    # with this sigma (0.6 puts the 99th percentile at about 4x the median), drawn from a
    # stream seeded by seed (0: from the model name). Give nodes different seeds for
    # independent draws. Default 0 (exact cost), 0 to 2.
    jitter = 0
    seed   = 0
  }
}

model "upstream" {
  backend = "openai"
  openai {
    # Base URL of the upstream's OpenAI API.
    url = "http://127.0.0.1:8000/v1"
    # Model name sent upstream. Default: this block's label.
    model = "llama"
    # Environment variable holding the upstream API key. Default: none.
    api_key_env = "UPSTREAM_API_KEY"
    # Per-call timeout. Default 60s.
    timeout = "60s"
    # Pooled connections to the upstream. Default 64.
    max_conns = 64
  }
}

# --- triton backend (issue 14) ---
model "triton-llm" {
  # A model on a Triton Inference Server or any KServe v2 (Open Inference Protocol) server,
  # taking a BYTES text_input tensor and answering text_output (Triton's vLLM and
  # TensorRT-LLM backends). A flushed batch goes upstream as one /infer call with an [n, 1]
  # tensor when the upstream model batches (its config's max_batch_size > 0), otherwise one
  # call per request; streams go to generate_stream. Generation parameters travel in the
  # request's "parameters" object.
  backend = "triton"
  triton {
    # Base URL of the server's HTTP endpoint (calls go to <url>/v2/...).
    url = "http://127.0.0.1:8000"
    # Model name upstream. Default: this block's label.
    model = "ensemble"
    # Upstream model version. Default: empty, the server's choice.
    version = ""
    # Per-call timeout (for a stream: per event). Default 60s.
    timeout = "60s"
    # Pooled connections to the upstream. Default 64.
    max_conns = 64
    # How often /v2/health/ready and the model's ready endpoint are checked; failed checks
    # show in /health and count against the model's circuit breaker. Default 5s.
    health_interval = "5s"
  }
}
# --- end triton backend ---

model "tiny" {
  backend = "engine"
  engine {
    # llama2.c checkpoint and tokenizer.bin. Both empty: the built-in synthetic model
    # (generated into data_dir on first start; random weights, so its text has no meaning).
    checkpoint = ""
    tokenizer  = ""
    # "none" (fp32) or "int8" (Q8_0 groups, about 4x less weight memory).
    quantize = "none"
    # Sequences decoded together in one step (continuous batching). Default 32.
    max_sequences = 32
    # Matmul goroutines; 0 means all cores. Default 0.
    threads = 0
    # KV cache budget in MiB; when full, new requests wait in the queue. Default 256.
    kv_cache_mb = 256
    # Keep finished prompts' KV cache, in blocks of 16 tokens, for later prompts sharing their
    # prefix (within kv_cache_mb, least recently used evicted first). Default true.
    prefix_cache = true
  }
}
