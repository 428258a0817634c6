package ops

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GPU is one device as nvidia-smi reports it.
type GPU struct {
	Index          int
	Name           string
	MemoryTotalMB  int
	MemoryUsedMB   int
	MemoryFreeMB   int
	UtilizationPct float64
}

// GPUCapacity sums a node's devices.
type GPUCapacity struct {
	Count         int
	MemoryTotalMB int
	MemoryFreeMB  int
	// UtilizationPct is the mean over devices.
	UtilizationPct float64
	// Detected says the numbers come from nvidia-smi, not from config.
	Detected bool
}

// nvidiaSMIQuery is the query whose columns ParseNvidiaSMI expects.
const nvidiaSMIQuery = "index,name,memory.total,memory.used,memory.free,utilization.gpu"

// ErrNoNvidiaSMI means the node has no nvidia-smi; capacity then comes from
// config.
var ErrNoNvidiaSMI = errors.New("nvidia-smi not found")

// QueryGPUs runs nvidia-smi with a timeout and parses its CSV.
func QueryGPUs(ctx context.Context) ([]GPU, error) {
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return nil, ErrNoNvidiaSMI
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--query-gpu="+nvidiaSMIQuery, "--format=csv,noheader,nounits").Output()
	if err != nil {
		return nil, fmt.Errorf("nvidia-smi: %w", err)
	}
	return ParseNvidiaSMI(out)
}

// ParseNvidiaSMI parses `nvidia-smi --query-gpu=index,name,memory.total,
// memory.used,memory.free,utilization.gpu --format=csv,noheader,nounits`.
// Fields nvidia-smi cannot read ("[N/A]", "[Not Supported]") count as 0.
func ParseNvidiaSMI(out []byte) ([]GPU, error) {
	r := csv.NewReader(strings.NewReader(string(out)))
	r.TrimLeadingSpace = true
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("parse nvidia-smi output: %w", err)
	}
	gpus := make([]GPU, 0, len(recs))
	for i, rec := range recs {
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if len(rec) != 6 {
			return nil, fmt.Errorf("parse nvidia-smi output: line %d has %d fields, want 6", i+1, len(rec))
		}
		num := func(s string) float64 {
			v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil || v < 0 || v > 1e9 {
				return 0
			}
			return v
		}
		idx, err := strconv.Atoi(strings.TrimSpace(rec[0]))
		if err != nil {
			return nil, fmt.Errorf("parse nvidia-smi output: line %d: bad index %q", i+1, rec[0])
		}
		gpus = append(gpus, GPU{
			Index: idx, Name: strings.TrimSpace(rec[1]),
			MemoryTotalMB: int(num(rec[2])), MemoryUsedMB: int(num(rec[3])), MemoryFreeMB: int(num(rec[4])),
			UtilizationPct: num(rec[5]),
		})
	}
	return gpus, nil
}

// Sum totals devices into a capacity.
func Sum(gpus []GPU) GPUCapacity {
	c := GPUCapacity{Count: len(gpus), Detected: true}
	for _, g := range gpus {
		c.MemoryTotalMB += g.MemoryTotalMB
		c.MemoryFreeMB += g.MemoryFreeMB
		c.UtilizationPct += g.UtilizationPct
	}
	if len(gpus) > 0 {
		c.UtilizationPct /= float64(len(gpus))
	}
	return c
}

// GPUMetrics exports per-device utilization and memory, registered only on
// nodes where nvidia-smi is present.
type GPUMetrics struct {
	util, used, total *prometheus.GaugeVec
}

// NewGPUMetrics registers the GPU gauges on reg.
func NewGPUMetrics(reg prometheus.Registerer) *GPUMetrics {
	g := &GPUMetrics{
		util:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "inference_gpu_utilization_percent", Help: "GPU utilization from nvidia-smi."}, []string{"gpu", "name"}),
		used:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "inference_gpu_memory_used_mb", Help: "GPU memory in use from nvidia-smi, in MiB."}, []string{"gpu", "name"}),
		total: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "inference_gpu_memory_total_mb", Help: "GPU memory from nvidia-smi, in MiB."}, []string{"gpu", "name"}),
	}
	reg.MustRegister(g.util, g.used, g.total)
	return g
}

// Update sets the gauges from a fresh query.
func (g *GPUMetrics) Update(gpus []GPU) {
	for _, d := range gpus {
		idx := strconv.Itoa(d.Index)
		g.util.WithLabelValues(idx, d.Name).Set(d.UtilizationPct)
		g.used.WithLabelValues(idx, d.Name).Set(float64(d.MemoryUsedMB))
		g.total.WithLabelValues(idx, d.Name).Set(float64(d.MemoryTotalMB))
	}
}
