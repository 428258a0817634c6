package kubernetes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/shoal-dev/shoal/node"
)

// newObject returns an empty API object for a manifest's apiVersion and
// kind; the manifests may use no other kinds.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, nil
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, nil
	}
	return nil, fmt.Errorf("unexpected %s %s", apiVersion, kind)
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// decodeStrict decodes every YAML document of data into its API type,
// refusing unknown and duplicate fields.
func decodeStrict(data []byte) ([]any, error) {
	var out []any
	for i, doc := range docSeparator.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := json.Unmarshal(js, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, tm.Kind, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// manifests holds every object of the directory by type.
type manifests struct {
	namespaces []*corev1.Namespace
	configMaps []*corev1.ConfigMap
	secrets    []*corev1.Secret
	services   map[string]*corev1.Service
	sts        *appsv1.StatefulSet
	pdb        *policyv1.PodDisruptionBudget
	hpa        *autoscalingv2.HorizontalPodAutoscaler
}

func load(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	m := manifests{services: map[string]*corev1.Service{}}
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		objs, err := decodeStrict(data)
		require.NoError(t, err, f)
		for _, o := range objs {
			switch o := o.(type) {
			case *corev1.Namespace:
				m.namespaces = append(m.namespaces, o)
			case *corev1.ConfigMap:
				m.configMaps = append(m.configMaps, o)
			case *corev1.Secret:
				m.secrets = append(m.secrets, o)
			case *corev1.Service:
				m.services[o.Name] = o
			case *appsv1.StatefulSet:
				require.Nil(t, m.sts, "one StatefulSet")
				m.sts = o
			case *policyv1.PodDisruptionBudget:
				m.pdb = o
			case *autoscalingv2.HorizontalPodAutoscaler:
				m.hpa = o
			}
			meta := objectMeta(o)
			if _, ok := o.(*corev1.Namespace); !ok {
				require.Equal(t, "shoal", meta.Namespace, "%s %s", f, meta.Name)
			}
			require.Equal(t, "shoal", meta.Labels["app.kubernetes.io/name"], "%s %s", f, meta.Name)
		}
	}
	require.NotNil(t, m.sts)
	require.NotNil(t, m.pdb)
	require.NotNil(t, m.hpa)
	return m
}

func objectMeta(o any) struct {
	Name, Namespace string
	Labels          map[string]string
} {
	b, _ := json.Marshal(o)
	var v struct {
		Metadata struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(b, &v)
	return struct {
		Name, Namespace string
		Labels          map[string]string
	}{v.Metadata.Name, v.Metadata.Namespace, v.Metadata.Labels}
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := load(t)
	require.Len(t, m.namespaces, 1)
	require.Len(t, m.configMaps, 1)
	require.Empty(t, m.secrets, "the secret is generated at install (doc.go), never shipped with a public value")
	require.Len(t, m.services, 2)
}

func TestStrictDecodingRejectsTypos(t *testing.T) {
	data, err := os.ReadFile("statefulset.yaml")
	require.NoError(t, err)
	for name, mutate := range map[string]func(string) string{
		"unknown field": func(s string) string { return strings.Replace(s, "podManagementPolicy:", "podManagmentPolicy:", 1) },
		"wrong type":    func(s string) string { return strings.Replace(s, "replicas: 3", "replicas: three", 1) },
		"duplicate field": func(s string) string {
			return strings.Replace(s, "  replicas: 3\n", "  replicas: 3\n  replicas: 4\n", 1)
		},
		"unknown kind": func(s string) string { return strings.Replace(s, "kind: StatefulSet", "kind: StatefulSets", 1) },
	} {
		t.Run(name, func(t *testing.T) {
			bad := mutate(string(data))
			require.NotEqual(t, string(data), bad)
			_, err := decodeStrict([]byte(bad))
			require.Error(t, err)
		})
	}
}

func selects(t *testing.T, selector map[string]string, labels map[string]string) {
	t.Helper()
	require.NotEmpty(t, selector)
	for k, v := range selector {
		require.Equal(t, v, labels[k], "selector %s=%s", k, v)
	}
}

func container(t *testing.T, sts *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	require.Len(t, sts.Spec.Template.Spec.Containers, 1)
	return sts.Spec.Template.Spec.Containers[0]
}

// flagValues returns every value of a repeatable flag in args.
func flagValues(args []string, flag string) []string {
	var out []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestStatefulSet(t *testing.T) {
	m := load(t)
	sts, c := m.sts, container(t, m.sts)
	headless := m.services[sts.Spec.ServiceName]
	require.NotNil(t, headless, "serviceName names the headless Service")
	require.Equal(t, appsv1.ParallelPodManagement, sts.Spec.PodManagementPolicy)
	require.EqualValues(t, 3, *sts.Spec.Replicas)
	selects(t, sts.Spec.Selector.MatchLabels, sts.Spec.Template.Labels)
	require.Equal(t, appsv1.DeletePersistentVolumeClaimRetentionPolicyType, sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenScaled)

	// Stable storage for Raft at the data dir.
	require.Len(t, sts.Spec.VolumeClaimTemplates, 1)
	claim := sts.Spec.VolumeClaimTemplates[0].Name
	dataDir := flagValues(c.Args, "--data-dir")
	require.Equal(t, []string{"/data"}, dataDir)
	require.True(t, slices.ContainsFunc(c.VolumeMounts, func(v corev1.VolumeMount) bool { return v.Name == claim && v.MountPath == "/data" }))

	// Joins go to the headless Service's stable pod names.
	require.Equal(t, []string{"node", "start"}, c.Args[:2])
	require.Equal(t, []string{"3"}, flagValues(c.Args, "--bootstrap-expect"))
	joins := flagValues(c.Args, "--join")
	require.Len(t, joins, 3)
	for i, j := range joins {
		require.Equal(t, fmt.Sprintf("%s-%d.%s.%s.svc.cluster.local:7946", sts.Name, i, headless.Name, sts.Namespace), j)
	}
	require.Equal(t, []string{"$(POD_NAME)"}, flagValues(c.Args, "--name"))
	require.True(t, slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}))

	// Probes on /health, on the named HTTP port.
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		require.NotNil(t, p, name)
		require.NotNil(t, p.HTTPGet, name)
		require.Equal(t, "/health", p.HTTPGet.Path, name)
		require.Equal(t, "http", p.HTTPGet.Port.String(), name)
	}

	// Graceful leave, within the grace period.
	require.NotNil(t, c.Lifecycle.PreStop.Exec)
	require.Equal(t, []string{"/shoal", "node", "leave"}, c.Lifecycle.PreStop.Exec.Command)
	cfg := clusterConfig(t, m)
	grace := time.Duration(*sts.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	require.Greater(t, grace, cfg.HTTP.DrainTimeout+10*time.Second, "the drain and the leave fit in the grace period")

	// Resources: the HPA's utilisation targets need requests.
	require.False(t, c.Resources.Requests.Cpu().IsZero())
	require.False(t, c.Resources.Requests.Memory().IsZero())

	// The Go heap is bounded below the container's memory limit.
	limit := c.Resources.Limits.Memory()
	require.False(t, limit.IsZero(), "a memory limit")
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" })
	require.GreaterOrEqual(t, i, 0, "GOMEMLIMIT is set")
	soft := goMemLimit(t, c.Env[i].Value)
	require.Greater(t, soft, limit.Value()*3/4, "GOMEMLIMIT %s wastes the limit %s", c.Env[i].Value, limit)
	require.Less(t, soft, limit.Value()*15/16, "GOMEMLIMIT %s leaves no room below the limit %s", c.Env[i].Value, limit)
	require.Equal(t, "shoal:dev", c.Image)
}

// clusterConfig loads the ConfigMap's cluster.hcl with the node's own loader,
// with the StatefulSet's flags applied the way `shoal node start` does.
func clusterConfig(t *testing.T, m manifests) node.Config {
	t.Helper()
	c := container(t, m.sts)
	var cm *corev1.ConfigMap
	for _, v := range m.sts.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil {
			for _, x := range m.configMaps {
				if x.Name == v.ConfigMap.Name {
					cm = x
				}
			}
		}
	}
	require.NotNil(t, cm, "the config volume names the ConfigMap")
	mountedAt := ""
	for _, vm := range c.VolumeMounts {
		if vm.Name == "config" {
			mountedAt = vm.MountPath
		}
	}
	require.Equal(t, []string{filepath.Join(mountedAt, "cluster.hcl")}, flagValues(c.Args, "--config"))
	path := filepath.Join(t.TempDir(), "cluster.hcl")
	require.NoError(t, os.WriteFile(path, []byte(cm.Data["cluster.hcl"]), 0o600))
	cfg := node.DefaultConfig()
	require.NoError(t, cfg.LoadFile(path))
	cfg.NodeName, cfg.DataDir = "shoal-0", t.TempDir()
	cfg.Join = flagValues(c.Args, "--join")
	require.NoError(t, cfg.Validate())
	return cfg
}

func TestConfigMapConfigLoads(t *testing.T) {
	cfg := clusterConfig(t, load(t))
	require.Equal(t, 3, cfg.Raft.BootstrapExpect)
	require.NotEmpty(t, cfg.Models)
}

// The StatefulSet reads its secrets from shoal-secrets, which the install
// command in doc.go generates with both keys.
func TestSecretIsGeneratedByTheDocumentedCommand(t *testing.T) {
	m := load(t)
	keys := map[string]bool{}
	for _, e := range container(t, m.sts).Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		require.Equal(t, "shoal-secrets", ref.Name, e.Name)
		keys[ref.Key] = true
	}
	require.Equal(t, map[string]bool{"admin-token": true, "gossip-key": true}, keys)
	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	for _, want := range []string{
		"kubectl -n shoal create secret generic shoal-secrets",
		`--from-literal=admin-token="$(openssl rand -hex 32)"`,
		`--from-literal=gossip-key="$(openssl rand -base64 32)"`,
	} {
		require.Contains(t, string(doc), want)
	}
}

func TestServices(t *testing.T) {
	m := load(t)
	headless := m.services[m.sts.Spec.ServiceName]
	require.Equal(t, corev1.ClusterIPNone, headless.Spec.ClusterIP)
	require.True(t, headless.Spec.PublishNotReadyAddresses, "pods must find each other before they are ready")
	c := container(t, m.sts)
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	for _, svc := range m.services {
		selects(t, svc.Spec.Selector, m.sts.Spec.Template.Labels)
		for _, p := range svc.Spec.Ports {
			cp, ok := ports[p.TargetPort.String()]
			require.True(t, ok, "service %s port %s targets a container port", svc.Name, p.Name)
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			cpProto := cp.Protocol
			if cpProto == "" {
				cpProto = corev1.ProtocolTCP
			}
			require.Equal(t, cpProto, proto, "service %s port %s", svc.Name, p.Name)
		}
	}
	// Gossip needs TCP and UDP on 7946, Raft 7947, Olric 3320 and 3322.
	for _, want := range []struct {
		port  int32
		proto corev1.Protocol
	}{{7946, corev1.ProtocolTCP}, {7946, corev1.ProtocolUDP}, {7947, corev1.ProtocolTCP}, {3320, corev1.ProtocolTCP}, {3322, corev1.ProtocolTCP}, {8080, corev1.ProtocolTCP}} {
		require.True(t, slices.ContainsFunc(headless.Spec.Ports, func(p corev1.ServicePort) bool {
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			return p.Port == want.port && proto == want.proto
		}), "headless service port %d/%s", want.port, want.proto)
	}
	client := m.services["shoal"]
	require.NotNil(t, client)
	require.NotEqual(t, corev1.ClusterIPNone, client.Spec.ClusterIP)
}

func TestPodDisruptionBudgetKeepsQuorum(t *testing.T) {
	m := load(t)
	require.NotNil(t, m.pdb.Spec.MaxUnavailable)
	require.Equal(t, 1, m.pdb.Spec.MaxUnavailable.IntValue())
	selects(t, m.pdb.Spec.Selector.MatchLabels, m.sts.Spec.Template.Labels)
	// Quorum of the bootstrap voters survives one disruption.
	voters := int(*m.sts.Spec.Replicas)
	require.Greater(t, voters-m.pdb.Spec.MaxUnavailable.IntValue(), voters/2)
}

func TestHorizontalPodAutoscaler(t *testing.T) {
	m := load(t)
	h := m.hpa.Spec
	require.Equal(t, "StatefulSet", h.ScaleTargetRef.Kind)
	require.Equal(t, m.sts.Name, h.ScaleTargetRef.Name)
	require.Equal(t, "apps/v1", h.ScaleTargetRef.APIVersion)
	require.EqualValues(t, 3, *h.MinReplicas)
	require.EqualValues(t, 10, h.MaxReplicas)
	targets := map[corev1.ResourceName]int32{}
	for _, mt := range h.Metrics {
		require.Equal(t, autoscalingv2.ResourceMetricSourceType, mt.Type)
		require.Equal(t, autoscalingv2.UtilizationMetricType, mt.Resource.Target.Type)
		targets[mt.Resource.Name] = *mt.Resource.Target.AverageUtilization
	}
	require.Equal(t, map[corev1.ResourceName]int32{corev1.ResourceCPU: 70, corev1.ResourceMemory: 80}, targets)
	// Scale down one pod at a time, as the PDB allows.
	require.NotNil(t, h.Behavior)
	for _, p := range h.Behavior.ScaleDown.Policies {
		if p.Type == autoscalingv2.PodsScalingPolicy {
			require.LessOrEqual(t, p.Value, int32(m.pdb.Spec.MaxUnavailable.IntValue()))
		}
	}
}

// The Prometheus config for Kubernetes discovers pods through the headless
// Service.
func TestPrometheusDiscoversHeadlessService(t *testing.T) {
	m := load(t)
	b, err := os.ReadFile(filepath.Join("..", "prometheus", "prometheus-kubernetes.yml"))
	require.NoError(t, err)
	name := fmt.Sprintf("%s.%s.svc.cluster.local", m.sts.Spec.ServiceName, m.sts.Namespace)
	require.Contains(t, string(b), name)
}

func FuzzDecodeStrict(f *testing.F) {
	for _, name := range []string{"statefulset.yaml", "hpa.yaml", "service.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("apiVersion: v1\nkind: Secret\n---\n")
	f.Fuzz(func(t *testing.T, in string) {
		objs, err := decodeStrict([]byte(in))
		if err != nil {
			return
		}
		for _, o := range objs {
			if o == nil {
				t.Fatal(errors.New("nil object without error"))
			}
		}
	})
}

// goMemLimit parses a GOMEMLIMIT value as the Go runtime does: an integer
// with an optional B, KiB, MiB, GiB or TiB suffix.
func goMemLimit(t *testing.T, v string) int64 {
	t.Helper()
	m := regexp.MustCompile(`^([0-9]+)(B|KiB|MiB|GiB|TiB)?$`).FindStringSubmatch(v)
	require.NotNil(t, m, "GOMEMLIMIT %q is not a size the Go runtime reads", v)
	n, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	shift := map[string]uint{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[m[2]]
	return n << shift
}
