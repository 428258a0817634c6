package bench

import (
	"fmt"
	"image/color"
	"io"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// maxScatter and maxCDF bound the points drawn, so a million-request run
// still renders quickly; the scatter keeps every error.
const (
	maxScatter = 20_000
	maxCDF     = 2_000
)

// WritePlot draws the report's samples as a PNG: latency over time (errors
// in red) above the latency CDF of successful requests.
func WritePlot(w io.Writer, r Report) error {
	var okPts, errPts plotter.XYs
	stride := max(1, len(r.Samples)/maxScatter)
	lats := make([]float64, 0, len(r.Samples))
	for i, s := range r.Samples {
		ms := float64(s.Latency) / float64(time.Millisecond)
		if s.OK {
			lats = append(lats, ms)
			if i%stride == 0 {
				okPts = append(okPts, plotter.XY{X: s.At.Seconds(), Y: ms})
			}
			continue
		}
		errPts = append(errPts, plotter.XY{X: s.At.Seconds(), Y: ms})
	}

	over := plot.New()
	over.Title.Text = fmt.Sprintf("%s %s: latency over time (%d requests)", r.Model, r.Endpoint, len(r.Samples))
	over.X.Label.Text = "scheduled send (s since start)"
	over.Y.Label.Text = "latency (ms)"
	over.Add(plotter.NewGrid())
	if len(okPts) > 0 {
		sc, err := plotter.NewScatter(okPts)
		if err != nil {
			return fmt.Errorf("plot scatter: %w", err)
		}
		sc.GlyphStyle.Radius = vg.Points(1.2)
		sc.GlyphStyle.Color = color.RGBA{R: 30, G: 100, B: 200, A: 255}
		over.Add(sc)
		over.Legend.Add("ok", sc)
	}
	if len(errPts) > 0 {
		sc, err := plotter.NewScatter(errPts)
		if err != nil {
			return fmt.Errorf("plot errors: %w", err)
		}
		sc.GlyphStyle.Radius = vg.Points(1.5)
		sc.GlyphStyle.Shape = draw.CrossGlyph{}
		sc.GlyphStyle.Color = color.RGBA{R: 210, G: 30, B: 30, A: 255}
		over.Add(sc)
		over.Legend.Add("error", sc)
	}
	over.Legend.Top = true

	cdf := plot.New()
	cdf.Title.Text = fmt.Sprintf("latency CDF (p50 %s, p95 %s, p99 %s)", fmtMs(r.Latency.P50), fmtMs(r.Latency.P95), fmtMs(r.Latency.P99))
	cdf.X.Label.Text = "latency (ms)"
	cdf.Y.Label.Text = "share of successful requests (%)"
	cdf.Y.Min, cdf.Y.Max = 0, 100
	cdf.Add(plotter.NewGrid())
	if len(lats) > 0 {
		slices.Sort(lats)
		step := max(1, len(lats)/maxCDF)
		pts := make(plotter.XYs, 0, len(lats)/step+2)
		for i := 0; i < len(lats); i += step {
			pts = append(pts, plotter.XY{X: lats[i], Y: 100 * float64(i+1) / float64(len(lats))})
		}
		pts = append(pts, plotter.XY{X: lats[len(lats)-1], Y: 100})
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot cdf: %w", err)
		}
		line.Color = color.RGBA{R: 30, G: 100, B: 200, A: 255}
		line.Width = vg.Points(1.5)
		cdf.Add(line)
	}

	const width, height = 10 * vg.Inch, 8 * vg.Inch
	img := vgimg.New(width, height)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 6, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align([][]*plot.Plot{{over}, {cdf}}, tiles, dc)
	over.Draw(canvases[0][0])
	cdf.Draw(canvases[1][0])
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		return fmt.Errorf("write png: %w", err)
	}
	return nil
}
