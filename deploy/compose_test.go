package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/shoal-dev/shoal/node"
)

const composeFile = "../docker-compose.yml"

// composeCommand is docker-compose, or docker with the compose plugin.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	if p, err := exec.LookPath("docker"); err == nil && exec.Command(p, "compose", "version").Run() == nil {
		return []string{p, "compose"}
	}
	requireTool(t, requireDocker, "install Docker Compose (Debian: apt-get install -y docker-compose)", "docker-compose")
	return nil
}

func TestComposeFileValidates(t *testing.T) {
	cmd := composeCommand(t)
	for _, profile := range [][]string{nil, {"--profile", "monitoring"}} {
		args := append(append(slices.Clone(cmd[1:]), "-f", composeFile), profile...)
		args = append(args, "config", "-q")
		c := exec.Command(cmd[0], args...)
		// The file has no default admin token: compose refuses without one.
		c.Env = append(os.Environ(), "SHOAL_ADMIN_TOKEN=compose-config-check")
		out, err := c.CombinedOutput()
		require.NoError(t, err, "%v: %s", args, out)
	}
}

// The admin token is the operator's secret: the compose file requires it
// rather than shipping a default that anyone reading the file knows.
func TestComposeRequiresAnAdminToken(t *testing.T) {
	b, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	require.NotContains(t, string(b), "change-me")
	var c struct {
		Shoal struct {
			Environment map[string]string `yaml:"environment"`
		} `yaml:"x-shoal"`
	}
	require.NoError(t, yaml.Unmarshal(b, &c))
	tok := c.Shoal.Environment["SHOAL_ADMIN_TOKEN"]
	require.True(t, strings.HasPrefix(tok, "${SHOAL_ADMIN_TOKEN:?"), "compose must refuse to start without SHOAL_ADMIN_TOKEN, got %q", tok)
}

// composeSpec is the part of docker-compose.yml the tests read.
type composeSpec struct {
	Services map[string]struct {
		Image    string   `yaml:"image"`
		Command  []string `yaml:"command"`
		Ports    []string `yaml:"ports"`
		Volumes  []string `yaml:"volumes"`
		Profiles []string `yaml:"profiles"`
		Build    *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		StopGracePeriod string `yaml:"stop_grace_period"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func readCompose(t *testing.T) composeSpec {
	t.Helper()
	b, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	var c composeSpec
	require.NoError(t, yaml.Unmarshal(b, &c))
	return c
}

// flagValue returns the value after flag in args.
func flagValue(args []string, flag string) string {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func TestComposeRunsThreeNodeCluster(t *testing.T) {
	c := readCompose(t)
	for i, name := range []string{"shoal-1", "shoal-2", "shoal-3"} {
		s, ok := c.Services[name]
		require.True(t, ok, name)
		require.Empty(t, s.Profiles, "%s runs by default", name)
		require.NotNil(t, s.Build, "%s builds from the Dockerfile", name)
		require.Equal(t, "Dockerfile", s.Build.Dockerfile)
		require.Equal(t, []string{"node", "start"}, s.Command[:2])
		require.Equal(t, name, flagValue(s.Command, "--name"))
		require.Equal(t, "/data", flagValue(s.Command, "--data-dir"))
		require.Equal(t, "0.0.0.0:8080", flagValue(s.Command, "--http-addr"))
		require.Equal(t, "3", flagValue(s.Command, "--bootstrap-expect"))
		require.Equal(t, "shoal-1:7946", flagValue(s.Command, "--join"))
		require.Equal(t, "/etc/shoal/cluster.hcl", flagValue(s.Command, "--config"))
		require.Equal(t, []string{"808" + string(rune('1'+i)) + ":8080"}, s.Ports)
		require.Contains(t, s.Volumes, "./deploy/docker/cluster.hcl:/etc/shoal/cluster.hcl:ro")
		require.Contains(t, s.Volumes, name+"-data:/data")
		require.Contains(t, c.Volumes, name+"-data")
		require.Equal(t, "30s", s.StopGracePeriod)
	}
	p, ok := c.Services["prometheus"]
	require.True(t, ok)
	require.Equal(t, []string{"monitoring"}, p.Profiles, "prometheus needs an image pull, so it is opt-in")
	require.Contains(t, p.Volumes, "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro")
	require.Contains(t, p.Volumes, "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro")
}

// TestComposeNodeConfigLoads loads the nodes' shared cluster.hcl with the
// node's own loader, so an unknown key or a bad value fails here.
func TestComposeNodeConfigLoads(t *testing.T) {
	cfg := node.DefaultConfig()
	require.NoError(t, cfg.LoadFile(filepath.Join("docker", "cluster.hcl")))
	cfg.NodeName, cfg.DataDir = "shoal-1", t.TempDir()
	require.NoError(t, cfg.Validate())
	require.Equal(t, 3, cfg.Raft.BootstrapExpect)
	require.Equal(t, "olric", cfg.Cache.Backend)
	var models []string
	for _, m := range cfg.Models {
		require.Equal(t, "sim", m.Backend)
		models = append(models, m.Name)
	}
	require.Equal(t, []string{"sim-fast", "sim-large"}, models)
	require.Less(t, cfg.HTTP.DrainTimeout.Seconds(), 30.0, "drain ends within the compose stop grace period")
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	require.NoError(t, err)
	var instr []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			instr = append(instr, line)
		}
	}
	require.Equal(t, "FROM scratch", instr[0], "no base image can be pulled")
	require.Equal(t, 1, strings.Count(string(b), "\nFROM "), "single stage")
	for _, want := range []string{
		"COPY bin/shoal-linux-amd64 /shoal",
		"EXPOSE 8080 7946/tcp 7946/udp 7947 3320 3322",
		`ENTRYPOINT ["/shoal"]`,
		`CMD ["node", "start", "--config", "/etc/shoal/cluster.hcl"]`,
		"USER 65532:65532",
	} {
		require.Contains(t, instr, want)
	}
	// What the Dockerfile copies exists (the binary comes from make).
	for _, p := range []string{"docker/rootfs/tmp", "docker/rootfs/data"} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.True(t, fi.IsDir())
	}
	ignore, err := os.ReadFile("../.dockerignore")
	require.NoError(t, err)
	require.Contains(t, string(ignore), "!bin/shoal-linux-amd64")
	require.Contains(t, string(ignore), "!deploy/docker/rootfs")
}
