package node

import (
	"context"
	"errors"
	"time"

	"github.com/shoal-dev/shoal/ops"
)

// detectGPU reads capacity from nvidia-smi when present, else from config;
// where nvidia-smi exists it also registers the GPU metrics.
func (n *Node) detectGPU(ctx context.Context) {
	cfgCap := ops.GPUCapacity{Count: n.cfg.GPU.Count, MemoryTotalMB: n.cfg.GPU.MemoryMB, MemoryFreeMB: n.cfg.GPU.MemoryMB}
	gpus, err := ops.QueryGPUs(ctx)
	switch {
	case errors.Is(err, ops.ErrNoNvidiaSMI):
		n.gpu.Store(&cfgCap)
		return
	case err != nil:
		n.logger.Warn("nvidia-smi failed; using configured GPU capacity", "err", err)
		n.gpu.Store(&cfgCap)
		return
	}
	c := ops.Sum(gpus)
	n.gpu.Store(&c)
	n.gpuMetrics = ops.NewGPUMetrics(n.metrics.Registry)
	n.gpuMetrics.Update(gpus)
	n.logger.Info("GPUs detected", "count", c.Count, "memory_total_mb", c.MemoryTotalMB)
}

// pollGPU refreshes utilization and free memory while nvidia-smi exists.
func (n *Node) pollGPU(ctx context.Context) {
	if n.gpuMetrics == nil {
		return
	}
	t := time.NewTicker(n.cfg.Tuning.GPUPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			gpus, err := ops.QueryGPUs(ctx)
			if err != nil {
				n.logger.Debug("nvidia-smi poll", "err", err)
				continue
			}
			c := ops.Sum(gpus)
			n.gpu.Store(&c)
			n.gpuMetrics.Update(gpus)
		}
	}
}

func (n *Node) gpuCapacity() ops.GPUCapacity {
	if c := n.gpu.Load(); c != nil {
		return *c
	}
	return ops.GPUCapacity{Count: n.cfg.GPU.Count, MemoryTotalMB: n.cfg.GPU.MemoryMB}
}
