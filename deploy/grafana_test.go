package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/shoal-dev/shoal/ops"
)

// exportedMetrics is every series name a shoal node can expose: each
// collector of ops.Metrics (described, so label sets never used yet count
// too, with the _bucket/_sum/_count series of histograms), the Go runtime
// and process collectors, and Prometheus's own up.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{"up": true}
	m := ops.NewMetrics()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || v.Field(i).IsNil() {
			continue
		}
		_, plain := c.(*prometheus.HistogramVec)
		_, perModel := c.(*ops.ModelHistogramVec)
		histogram := plain || perModel
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			match := fqName.FindStringSubmatch(d.String())
			require.NotNil(t, match, d.String())
			names[match[1]] = true
			if histogram {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[match[1]+suffix] = true
				}
			}
		}
	}
	fams, err := m.Registry.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		names[f.GetName()] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[f.GetName()+"_bucket"] = true
			fallthrough
		case dto.MetricType_SUMMARY:
			names[f.GetName()+"_sum"], names[f.GetName()+"_count"] = true, true
		}
	}
	return names
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("prometheus", "rules.yml"))
	require.NoError(t, err)
	var rf ruleFile
	require.NoError(t, yaml.Unmarshal(b, &rf))
	require.NotEmpty(t, rf.Groups)
	return rf
}

var (
	promString   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGrouping = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	labelValues  = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)
)

// promKeywords are identifiers of PromQL that are not series names.
var promKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true,
}

// seriesNames returns the metric (or recording rule) names a PromQL
// expression selects: identifiers that are not functions, keywords, label
// names, numbers or durations.
func seriesNames(expr string) []string {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	e := promString.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, "{}")
	// A space, not nothing, where text is cut: "a[5m]0" must not become
	// the identifier "a0".
	e = promRange.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsAny(e[loc[0]-1:loc[0]], "0123456789.$") {
			continue // part of a number (1e9), a duration or a $variable
		}
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[strings.ToLower(name)] {
			continue
		}
		out = append(out, name)
	}
	return out
}

func TestSeriesNames(t *testing.T) {
	tests := map[string][]string{
		`sum by (model) (rate(inference_requests_total{code=~"5..", model="a b"}[5m]))`: {"inference_requests_total"},
		`histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m]))) > 300`:              {"x_bucket"},
		`a / on(instance) group_left b offset 5m`:                                       {"a", "b"},
		`process_resident_memory_bytes > 6 * 1024 * 1e9`:                                {"process_resident_memory_bytes"},
		`(sum(rate(h[5m])) or vector(0)) / sum(rate(m[5m]))`:                            {"h", "m"},
		`up{job="shoal", instance=~"$instance"} == bool 0`:                              {"up"},
		`label_values(inference_requests_total, instance)`:                              {"inference_requests_total"},
		`shoal:inference_request_duration_ms:p95_5m`:                                    {"shoal:inference_request_duration_ms:p95_5m"},
	}
	for expr, want := range tests {
		require.Equal(t, want, seriesNames(expr), expr)
	}
}

func FuzzSeriesNames(f *testing.F) {
	f.Add(`sum by (model) (rate(inference_requests_total{code=~"5.."}[5m]))`)
	f.Add(`label_values(m, l)`)
	f.Add("a{b=`c`} / ignoring(x) d[1m:10s]")
	f.Fuzz(func(t *testing.T, expr string) {
		for _, n := range seriesNames(expr) {
			require.Regexp(t, `^[a-zA-Z_:][a-zA-Z0-9_:]*$`, n)
			require.Contains(t, expr, n)
		}
	})
}

// dashboard is the part of the Grafana JSON the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query struct {
				Query string `json:"query"`
			} `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("grafana", "shoal-dashboard.json"))
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(b, &d))
	return d
}

func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

func TestDashboardQueriesExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	recorded := map[string]bool{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	d := readDashboard(t)
	require.Equal(t, "shoal-overview", d.UID)
	var used []string
	check := func(where, expr string) {
		names := seriesNames(expr)
		require.NotEmpty(t, names, "%s: %q selects no series", where, expr)
		for _, n := range names {
			require.True(t, exported[n] || recorded[n], "%s: %q uses %q, which shoal does not export and rules.yml does not record", where, expr, n)
			used = append(used, n)
		}
	}
	ids := map[int]bool{}
	for _, p := range flatten(d.Panels) {
		require.False(t, ids[p.ID], "panel id %d twice", p.ID)
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			require.False(t, refs[tg.RefID], "panel %q: refId %s twice", p.Title, tg.RefID)
			refs[tg.RefID] = true
			check("panel "+p.Title, tg.Expr)
		}
		require.Positive(t, p.GridPos.W)
		require.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "panel %q is wider than the grid", p.Title)
	}
	for _, v := range d.Templating.List {
		check("variable "+v.Name, v.Query.Query)
	}
	sort.Strings(used)
	t.Logf("dashboard series: %v", slices.Compact(used))
}

func TestDashboardCoversTheIssue(t *testing.T) {
	var titles []string
	for _, p := range flatten(readDashboard(t).Panels) {
		titles = append(titles, strings.ToLower(p.Title))
	}
	all := strings.Join(titles, "|")
	for _, topic := range []string{"latency percentiles", "throughput", "queue depth", "batch size", "cache hit", "circuit breakers", "rate-limited", "per node"} {
		require.Contains(t, all, topic)
	}
}

func TestRulesUseExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	recorded := map[string]bool{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			for _, n := range seriesNames(r.Expr) {
				require.True(t, exported[n] || recorded[n], "rule %s%s uses %q, which is neither exported nor recorded before it", r.Record, r.Alert, n)
			}
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	require.NotEmpty(t, recorded)
}
