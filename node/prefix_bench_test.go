package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/shoal-dev/shoal/engine"
	"github.com/shoal-dev/shoal/router"
	"github.com/stretchr/testify/require"
)

// prefixWords build the system prompts: common words of the built-in
// model's vocabulary, about one token each.
var prefixWords = strings.Fields("the of and to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part")

// systemPrompt is the i-th of the benchmark's system prompts: n words,
// distinct from the first; the built-in model's tokenizer makes about 1.2
// tokens of a word.
func systemPrompt(i, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "system %d:", i)
	for j := 0; j < n; j++ {
		b.WriteByte(' ')
		b.WriteString(prefixWords[(i*7+j*j+3*j)%len(prefixWords)])
	}
	return b.String()
}

type prefixRun struct {
	name           string
	ttft50, ttft99 float64
	reqPerSec      float64
	hitRatio       float64
	errors         int
	served         map[string]int
}

// BenchmarkPrefixRouting: system prompts of about 400 tokens, each with
// many user suffixes, over three engine nodes serving the built-in model's
// generator with a 768-token context; TTFT and throughput with prefix
// caching and prefix-aware routing against without either, and caching
// with load-only routing in between. With 8 prompts every node's cache
// holds them all; with 24 prompts and 64 MiB of KV per node it holds about
// a third, which is where routing by prefix matters:
//
//	go test ./node -run '^$' -bench PrefixRouting -benchtime 1x
func BenchmarkPrefixRouting(b *testing.B) {
	dir := b.TempDir()
	opts := engine.DefaultGenOptions()
	opts.SeqLen = 768
	require.NoError(b, engine.GenerateModel(dir, opts))
	for _, load := range []struct {
		name              string
		systems, suffixes int
		kvMB              int
	}{
		{"8-prompts", 8, 16, 256},
		{"24-prompts-64MiB", 24, 6, 64},
	} {
		b.Run(load.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				prefixScenarios(b, dir, load.systems, load.suffixes, load.kvMB)
			}
		})
	}
}

func prefixScenarios(b *testing.B, dir string, systems, suffixes, kvMB int) {
	const clients = 6
	var runs []prefixRun
	for _, sc := range []struct {
		name   string
		cache  bool
		weight float64
	}{
		{"no-prefix", false, 0},
		{"cache-only", true, 0},
		{"cache+routing", true, router.DefaultPrefixWeight},
	} {
		tc := mustNewCluster(b, 3, func(_ int, cfg *Config) {
			cfg.Router.PrefixWeight = sc.weight
			m := DefaultModelConfig("tiny", "engine")
			m.Engine.Checkpoint = filepath.Join(dir, "model.bin")
			m.Engine.Tokenizer = filepath.Join(dir, "tokenizer.bin")
			m.Engine.Threads, m.Engine.MaxSequences, m.Engine.PrefixCache, m.Engine.KVCacheMB = 1, 8, sc.cache, kvMB
			cfg.Models = append(cfg.Models, m)
		})
		require.Eventually(b, func() bool {
			for _, nd := range tc.nodes {
				if len(nd.candidates("tiny")) != 3 {
					return false
				}
			}
			return true
		}, clusterWait, 10*time.Millisecond)
		r := runPrefixLoad(b, tc.nodes, systems, suffixes, clients)
		r.name = sc.name
		var hits, lookups float64
		for _, nd := range tc.nodes {
			m := scrapeMetrics(b, nd)
			hits += metricSum(m, "inference_prefix_cache_hit_tokens_total")
			lookups += metricSum(m, "inference_prefix_cache_lookup_tokens_total")
		}
		r.hitRatio = hits / max(lookups, 1)
		runs = append(runs, r)
		for _, nd := range tc.nodes {
			stopNode(nd)
		}
	}
	for _, r := range runs {
		b.Logf("%-14s TTFT p50 %7.1fms p99 %7.1fms, %5.2f req/s, prefix hit ratio %.2f, errors %d, shares %s", r.name, r.ttft50, r.ttft99, r.reqPerSec, r.hitRatio, r.errors, shares(r.served))
		b.ReportMetric(r.ttft50, r.name+"-ttft-p50-ms")
		b.ReportMetric(r.reqPerSec, r.name+"-req/s")
	}
	with, without := runs[len(runs)-1], runs[0]
	b.ReportMetric(without.ttft50/with.ttft50, "ttft-p50-speedup")
	b.ReportMetric(with.reqPerSec/without.reqPerSec, "throughput-gain")
	b.ReportMetric(with.hitRatio, "hit-ratio")
	b.Logf("prefix caching and routing: TTFT p50 %.1fx lower, throughput %.2fx", without.ttft50/with.ttft50, with.reqPerSec/without.reqPerSec)
}

// runPrefixLoad streams systems*suffixes completions (temperature 0, 4
// tokens) from clients goroutines over every node as entry point and times
// each first token.
func runPrefixLoad(b *testing.B, nodes []*Node, systems, suffixes, clients int) prefixRun {
	hist := hdrhistogram.New(1, 600_000_000, 3)
	var mu sync.Mutex
	run := prefixRun{served: map[string]int{}}
	// Each request picks its system prompt at random (a fixed sequence).
	rng := rand.New(rand.NewPCG(1, 2))
	sys := make([]int, systems*suffixes)
	next := make(chan int, systems*suffixes)
	for j := range systems * suffixes {
		sys[j] = rng.IntN(systems)
		next <- j
	}
	close(next)
	client := &http.Client{Timeout: 5 * time.Minute}
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				// A system prompt of about 400 tokens, then the user's part.
				prompt := systemPrompt(sys[j], 338) + fmt.Sprintf(" user %d: %s %s?", j, prefixWords[j%len(prefixWords)], prefixWords[(j*5)%len(prefixWords)])
				body, _ := json.Marshal(map[string]any{"model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": true})
				ttft, node, err := firstToken(client, "http://"+nodes[j%len(nodes)].HTTPAddr()+"/v1/completions", body)
				mu.Lock()
				if err != nil {
					run.errors++
					b.Logf("request %d: %v", j, err)
				} else {
					_ = hist.RecordValue(ttft.Microseconds())
					run.served[node]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	run.ttft50 = float64(hist.ValueAtQuantile(50)) / 1000
	run.ttft99 = float64(hist.ValueAtQuantile(99)) / 1000
	run.reqPerSec = float64(hist.TotalCount()) / elapsed.Seconds()
	return run
}

// firstToken posts a streaming request and returns when its first data
// event arrived and which node ran it; it reads the stream to its end.
func firstToken(client *http.Client, url string, body []byte) (time.Duration, string, error) {
	t0 := time.Now()
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	node := resp.Header.Get("X-Shoal-Node")
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, node, fmt.Errorf("status %d: %s", resp.StatusCode, msg)
	}
	sc := bufio.NewScanner(resp.Body)
	var ttft time.Duration
	for sc.Scan() {
		if ttft == 0 && strings.HasPrefix(sc.Text(), "data: {") {
			ttft = time.Since(t0)
		}
	}
	if ttft == 0 {
		return 0, node, fmt.Errorf("no data event")
	}
	return ttft, node, sc.Err()
}

// metricSum adds every sample of a metric in Prometheus text.
func metricSum(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		var v float64
		if _, err := fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v); err == nil {
			sum += v
		}
	}
	return sum
}

func scrapeMetrics(tb testing.TB, nd *Node) string {
	resp, err := http.Get("http://" + nd.HTTPAddr() + "/metrics")
	require.NoError(tb, err)
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	require.NoError(tb, err)
	return buf.String()
}
