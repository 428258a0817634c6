package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// findChromium returns a headless-capable browser, or skips the test where
// none is installed (CI installs Debian's chromium and sets
// SHOAL_REQUIRE_CHROMIUM, which turns the skip into a failure).
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("SHOAL_REQUIRE_CHROMIUM") != "" {
		t.Fatal("SHOAL_REQUIRE_CHROMIUM is set but no chromium is on PATH (apt-get install chromium)")
	}
	t.Skip("browser test skipped: no chromium on PATH (install Debian's chromium: apt-get install chromium)")
	return ""
}

// artifactDir is where the test leaves its screenshot: $SHOAL_TEST_ARTIFACTS
// when set (CI keeps it), else the test's temporary directory.
func artifactDir(t *testing.T) string {
	if d := os.Getenv("SHOAL_TEST_ARTIFACTS"); d != "" {
		require.NoError(t, os.MkdirAll(d, 0o755))
		return d
	}
	return t.TempDir()
}

// TestWebUIInBrowser drives /ui/ in headless Chromium against a real
// 3-node cluster: the page asks for the admin token, lists the members, a
// fourth node appears without a reload, a batching change made through the
// form is seen on another node (and a bad one shows the admin API's 400), a
// breaker opened by its button shows as open here and on another node and
// closes again, the cache purges, and the chart and latency columns fill
// from live traffic. It fails on any uncaught exception or console.error.
func TestWebUIInBrowser(t *testing.T) {
	chromium := findChromium(t)
	if testing.Short() {
		t.Skip("browser test skipped in -short mode")
	}
	tc := mustNewCluster(t, 3, withAdminToken)
	n1, n3 := tc.nodes[0], tc.nodes[2]

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1400, 1300))
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()

	var mu sync.Mutex
	var exceptions []string
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			mu.Lock()
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			exceptions = append(exceptions, fmt.Sprintf("%s:%d: %s", d.URL, d.LineNumber+1, msg))
			mu.Unlock()
		}
	}))

	// step runs browser actions with a bound, so a page that never shows
	// what we wait for fails the test instead of hanging it.
	step := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		err := chromedp.Do(sctx, steps...)
		if err != nil {
			// Say what the page showed, for the failure message.
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			defer dcancel()
			text, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Logf("page text at failure:\n%s", text)
		}
		require.NoError(t, err, what)
	}
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(25*time.Second))
	}
	screenshot := func(name string) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		defer scancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		p := filepath.Join(artifactDir(t), name)
		require.NoError(t, os.WriteFile(p, png, 0o644))
		t.Logf("screenshot: %s", p)
	}

	// The cluster has an admin token: the page says 401 and asks for it.
	step("open the page",
		chromedp.Navigate("http://"+n1.HTTPAddr()+"/ui/"),
		poll(`!document.getElementById("banner").hidden && document.getElementById("banner").textContent.includes("401")`))
	screenshot("webui-login.png")
	step("sign in",
		chromedp.SendKeys(chromedp.ID("token"), testToken),
		chromedp.Click(chromedp.ID("token-save")),
		poll(`document.getElementById("banner").hidden`),
		poll(`document.querySelectorAll("#members tbody tr[data-member]").length === 3`),
		poll(`document.querySelector("#members .badge.leader") !== null`),
		poll(`document.querySelector('#models tr[data-model="sim-fast"]') !== null`))

	// A node that joins shows up on the open page.
	cfg := clusterNodeConfig(t, "n4", t.TempDir())
	withAdminToken(3, &cfg)
	cfg.Join = []string{n1.GossipAddr()}
	n4, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, n4.Start(context.Background()))
	t.Cleanup(func() { stopNode(n4) })
	step("fourth member appears", poll(`document.querySelector('#members tr[data-member="n4"]') !== null`))

	// Batching through the form, applied through Raft, read back on n3.
	step("change batching",
		chromedp.SetValue(chromedp.ID("bf-model"), "sim-fast"),
		chromedp.SendKeys(chromedp.ID("bf-max-size"), "7"),
		chromedp.SendKeys(chromedp.ID("bf-flush"), "7ms"),
		chromedp.Click(chromedp.ID("bf-apply")),
		poll(`document.getElementById("bf-result").textContent.includes("applied to sim-fast")`),
		poll(`document.querySelector('#models tr[data-model="sim-fast"] .max-size').textContent === "7"`))
	require.Eventually(t, func() bool {
		res := tryJSON(http.MethodGet, "http://"+n3.HTTPAddr()+"/admin/v1/batching", testToken, nil)
		var b struct {
			Models map[string]struct {
				MaxSize      int    `json:"max_size"`
				FlushTimeout string `json:"flush_timeout"`
			} `json:"models"`
		}
		return res.status == http.StatusOK && json.Unmarshal(res.body, &b) == nil &&
			b.Models["sim-fast"].MaxSize == 7 && b.Models["sim-fast"].FlushTimeout == "7ms"
	}, clusterWait, 50*time.Millisecond, "n3 never saw the batching change made through the page")

	// A bad value is refused by the admin API and the page shows why.
	step("bad batching value",
		chromedp.SetValue(chromedp.ID("bf-max-size"), ""),
		chromedp.SetValue(chromedp.ID("bf-flush"), "soon"),
		chromedp.Click(chromedp.ID("bf-apply")),
		poll(`document.getElementById("bf-result").textContent.includes("400") && document.getElementById("bf-result").textContent.includes("flush_timeout")`))

	// Open n2's breaker with its button; the row shows open, and so does n3.
	row := `#breakers tr[data-breaker="n2/sim-fast"]`
	step("open a breaker",
		poll(`document.querySelector('`+row+` td.state').textContent === "closed"`),
		chromedp.Click(chromedp.CSS(row+` button[data-action="open"]`)),
		poll(`document.querySelector('`+row+` td.state').textContent === "open"`))
	require.Eventually(t, func() bool {
		res := tryJSON(http.MethodGet, "http://"+n3.HTTPAddr()+"/admin/v1/breakers", testToken, nil)
		var b struct {
			Breakers []struct{ Node, Model, State string } `json:"breakers"`
		}
		if res.status != http.StatusOK || json.Unmarshal(res.body, &b) != nil {
			return false
		}
		for _, br := range b.Breakers {
			if br.Node == "n2" && br.Model == "sim-fast" {
				return br.State == "open"
			}
		}
		return false
	}, clusterWait, 50*time.Millisecond, "n3 never saw the breaker opened through the page")

	step("close it again and purge the cache",
		chromedp.Click(chromedp.CSS(row+` button[data-action="close"]`)),
		poll(`document.querySelector('`+row+` td.state').textContent === "closed"`),
		chromedp.Click(chromedp.ID("purge")),
		poll(`document.getElementById("purge-result").textContent === "purged all models"`))

	// Traffic into n1 until the page has drawn it: a steady trickle rather
	// than one burst, so the newest interval on the chart is never empty
	// however slowly the box runs.
	stop, done := make(chan struct{}), make(chan struct{})
	var sent, failed atomic.Int64
	stopTraffic := sync.OnceFunc(func() { close(stop); <-done })
	defer stopTraffic() // also when a step fails
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		client := &http.Client{Timeout: 10 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			body := fmt.Sprintf(`{"model":"sim-fast","input":"q%d"}`, i)
			resp, err := client.Post("http://"+n1.HTTPAddr()+"/v1/infer", "application/json", strings.NewReader(body))
			sent.Add(1)
			if err != nil {
				failed.Add(1)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
			}
		}
	}()
	step("chart and latency drawn",
		poll(`parseFloat(document.getElementById("chart-rps").textContent) > 0`),
		poll(`document.querySelector("#chart polyline.rps").getAttribute("points").split(" ").length >= 2`),
		poll(`document.querySelector('#models tr[data-model="sim-fast"] td:nth-child(7)').textContent.endsWith("ms")`))
	screenshot("webui.png")
	stopTraffic()
	require.Zero(t, failed.Load(), "of %d requests", sent.Load())

	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, exceptions, "the page threw or logged errors")
}
