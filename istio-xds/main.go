// Command istio-xds prints the xDS that Istio's control plane (pilot) generates for an
// ingress gateway, from rendered Kubernetes and Istio objects, with no cluster.
//
// It runs Istio's own translation: istio.io/istio/pilot/test/xds builds a discovery server
// over in-memory stores (NewFakeDiscoveryServer), and the listeners, routes, clusters and
// endpoint assignments of a router proxy labelled like the ingress gateway are printed as
// Envoy v3 JSON (protobuf field names, as in Envoy's config_dump).
//
// Usage:
//
//	istio-xds [flags] [file.yaml ...]     one stage: YAML on stdin or in files
//	istio-xds -batch [flags]              many cases: JSON lines {"id", "yaml"} on stdin,
//	                                      one JSON line per case on stdout
//
// Objects whose apiVersion belongs to Istio (*.istio.io) or to the Gateway API go to Istio's
// config store; everything else (Services, Pods, EndpointSlices, Namespaces, ...) goes to the
// fake Kubernetes client, from which Istio's Kubernetes registry computes services and
// endpoints exactly as it would from a cluster. Istio reads no Deployments: give it the Pods
// and EndpointSlices a Deployment would have.
//
// Istio reads its PILOT_* feature flags from the environment when the program starts. The
// flags in requiredEnv switch off what upstream Envoy cannot load; unless they are already
// set, the program re-executes itself with them set, so every run sees the same flags.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/test"
)

// requiredEnv are Istio feature flags read at start-up (pilot/pkg/features), set here so
// that Istio itself leaves out the extensions only Istio's Envoy build has.
var requiredEnv = [][2]string{
	// istio.metadata_exchange / peer_metadata HTTP filters (an Istio Envoy extension).
	{"PILOT_ENABLE_METADATA_EXCHANGE", "false"},
	// istio.alpn upstream filter on outbound clusters (an Istio Envoy extension).
	{"PILOT_ENABLE_ALPN_FILTER", "false"},
	// The istio-peer-exchange ALPN on mTLS clusters (no mTLS here, kept off for clarity).
	{"PILOT_DISABLE_MX_ALPN", "true"},
	// Each case builds a fresh server; a cache across pushes buys nothing.
	{"PILOT_ENABLE_XDS_CACHE", "false"},
}

// defaultMeshConfig is applied over Istio's default mesh configuration. Auto-mTLS adds
// transport-socket matches whose certificates come over SDS from istiod, which a file-fed
// Envoy does not have; tracing points the gateway at a Zipkin cluster no one defines here.
// Neither changes which upstream a request is routed to.
const defaultMeshConfig = `
enableAutoMtls: false
enableTracing: false
`

type options struct {
	batch         bool
	analyze       bool
	runtimeKinds  bool
	meshConfig    string
	labels        map[string]string
	namespace     string
	istioVersion  string
	proxyIP       string
	verbose       bool
	compactOutput bool
}

type input struct {
	ID   string `json:"id"`
	YAML string `json:"yaml"`
}

// finding is what Istio's own validation (the admission webhook's checks) says of one object.
type finding struct {
	Object  string `json:"object"`
	Error   string `json:"error,omitempty"`
	Warning string `json:"warning,omitempty"`
}

type result struct {
	ID         string            `json:"id,omitempty"`
	Error      string            `json:"error,omitempty"`
	Validation []finding         `json:"validation"`
	Listeners  []json.RawMessage `json:"listeners"`
	Routes     []json.RawMessage `json:"routes"`
	Clusters   []json.RawMessage `json:"clusters"`
	Endpoints  []json.RawMessage `json:"endpoints"`
}

func main() {
	if err := ensureEnv(); err != nil {
		fmt.Fprintf(os.Stderr, "istio-xds: %v\n", err)
		os.Exit(2)
	}
	opts, files := parseFlags()
	quietLogs(opts.verbose)
	mc, err := mesh.ApplyMeshConfig(defaultMeshConfig+"\n"+opts.meshConfig, mesh.DefaultMeshConfig())
	if err != nil {
		fmt.Fprintf(os.Stderr, "istio-xds: mesh config: %v\n", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if opts.analyze {
		mainAnalyze(out, opts, files)
		return
	}
	text, single := batchOrRead(out, opts.batch, files, func() error { return runBatch(os.Stdin, out, opts, mc) })
	if !single {
		return
	}
	res := generate(text, opts, mc)
	if res.Error != "" {
		fmt.Fprintf(os.Stderr, "istio-xds: %s\n", res.Error)
		os.Exit(1)
	}
	if err := writeJSON(out, res, !opts.compactOutput); err != nil {
		fmt.Fprintf(os.Stderr, "istio-xds: %v\n", err)
		os.Exit(1)
	}
}

// mainAnalyze is main for -analyze: one JSON object {"analysis": [...]} for the YAML read,
// or with -batch one JSON line per case. Exit status 1 when the objects cannot be read.
func mainAnalyze(out *bufio.Writer, opts options, files []string) {
	text, single := batchOrRead(out, opts.batch, files, func() error {
		return runAnalyzeBatch(os.Stdin, out, opts.namespace, opts.runtimeKinds)
	})
	if !single {
		return
	}
	res := analyze(text, opts.namespace, opts.runtimeKinds)
	if res.Error != "" {
		fmt.Fprintf(os.Stderr, "istio-xds: %s\n", res.Error)
		os.Exit(1)
	}
	data, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "istio-xds: %v\n", err)
		os.Exit(1)
	}
	out.Write(append(data, '\n'))
}

// batchOrRead runs batch when -batch is set and returns single = false; otherwise it returns
// the YAML of files (stdin when none). Either failure ends the program with exit status 2.
func batchOrRead(out *bufio.Writer, isBatch bool, files []string, batch func() error) (text string, single bool) {
	if isBatch {
		if err := batch(); err != nil {
			out.Flush()
			fmt.Fprintf(os.Stderr, "istio-xds: %v\n", err)
			os.Exit(2)
		}
		return "", false
	}
	text, err := readInputs(files)
	if err != nil {
		fmt.Fprintf(os.Stderr, "istio-xds: %v\n", err)
		os.Exit(2)
	}
	return text, true
}

// ensureEnv re-executes the program with requiredEnv set when any of it is missing.
func ensureEnv() error {
	missing := false
	for _, kv := range requiredEnv {
		if _, ok := os.LookupEnv(kv[0]); !ok {
			missing = true
			if err := os.Setenv(kv[0], kv[1]); err != nil {
				return err
			}
		}
	}
	if !missing {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find own executable to set %s: %v", requiredEnv[0][0], err)
	}
	return syscall.Exec(self, os.Args, os.Environ())
}

func parseFlags() (options, []string) {
	var o options
	var labels, meshFile string
	flag.BoolVar(&o.analyze, "analyze", false, "run Istio's configuration analyzers (istioctl analyze --use-kube=false -A) instead of printing xDS")
	flag.BoolVar(&o.runtimeKinds, "runtime-kinds", false, "with -analyze: also read Services, Namespaces, Pods, Nodes, Secrets from the files (istioctl's file mode ignores them)")
	flag.BoolVar(&o.batch, "batch", false, `read JSON lines {"id": ..., "yaml": ...} on stdin, write one JSON line per case`)
	flag.StringVar(&meshFile, "mesh-config", "", "a MeshConfig YAML file applied over Istio's defaults (auto-mTLS off)")
	flag.StringVar(&labels, "gateway-labels", "istio=ingressgateway,app=istio-ingressgateway", "labels of the gateway proxy")
	flag.StringVar(&o.namespace, "gateway-namespace", "istio-system", "namespace of the gateway proxy")
	flag.StringVar(&o.istioVersion, "proxy-version", "1.30.4", "Istio version the gateway proxy reports")
	flag.StringVar(&o.proxyIP, "proxy-ip", "10.255.0.1", "IP address of the gateway proxy")
	flag.BoolVar(&o.verbose, "v", false, "Istio's own logs on stderr (default: errors only)")
	flag.BoolVar(&o.compactOutput, "compact", false, "one-line JSON output")
	flag.Parse()
	o.labels = map[string]string{}
	for _, kv := range strings.Split(labels, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "istio-xds: -gateway-labels: %q is not key=value\n", kv)
			os.Exit(2)
		}
		o.labels[k] = v
	}
	if meshFile != "" {
		data, err := os.ReadFile(meshFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "istio-xds: -mesh-config: %v\n", err)
			os.Exit(2)
		}
		o.meshConfig = string(data)
	}
	return o, flag.Args()
}

// quietLogs sends Istio's logs to stderr (stdout carries the JSON) at error level.
func quietLogs(verbose bool) {
	lo := istiolog.DefaultOptions()
	lo.OutputPaths = []string{"stderr"}
	lo.ErrorOutputPaths = []string{"stderr"}
	if !verbose {
		lo.SetDefaultOutputLevel("all", istiolog.ErrorLevel)
	}
	_ = istiolog.Configure(lo)
}

func readInputs(files []string) (string, error) {
	if len(files) == 0 {
		data, err := io.ReadAll(os.Stdin)
		return string(data), err
	}
	var parts []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		parts = append(parts, string(data))
	}
	return strings.Join(parts, "\n---\n"), nil
}

func runBatch(in io.Reader, out *bufio.Writer, o options, mc *meshconfig.MeshConfig) error {
	return eachCase(in, out, func(c input) any {
		res := generate(c.YAML, o, mc)
		res.ID = c.ID
		return res
	})
}

// eachCase reads one JSON case {"id", "yaml"} per line of in and writes, for each, the JSON
// line handle returns, flushed at once so a caller reading the stream sees it case by case.
func eachCase(in io.Reader, out *bufio.Writer, handle func(input) any) error {
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	line := 0
	for scanner.Scan() {
		line++
		if len(bytes.TrimSpace(scanner.Bytes())) == 0 {
			continue
		}
		var c input
		if err := json.Unmarshal(scanner.Bytes(), &c); err != nil {
			return fmt.Errorf("stdin line %d: %v", line, err)
		}
		if err := writeJSON(out, handle(c), false); err != nil {
			return err
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return scanner.Err()
}

func writeJSON(out io.Writer, res any, indent bool) error {
	var data []byte
	var err error
	if indent {
		data, err = json.MarshalIndent(res, "", " ")
	} else {
		data, err = json.Marshal(res)
	}
	if err != nil {
		return err
	}
	_, err = out.Write(append(data, '\n'))
	return err
}

// split sorts the YAML documents into Istio config and Kubernetes objects.
func split(text string) (config, kube string, err error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(text)))
	var cfg, k8s []string
	for {
		doc, rerr := reader.Read()
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return "", "", rerr
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return "", "", fmt.Errorf("not YAML: %v", err)
		}
		if head.APIVersion == "" && head.Kind == "" {
			continue // an empty document (comments only)
		}
		if head.Kind == "List" {
			return "", "", errors.New("a List object: give the items as separate documents")
		}
		group, _, _ := strings.Cut(head.APIVersion, "/")
		if strings.HasSuffix(group, "istio.io") || group == "gateway.networking.k8s.io" {
			cfg = append(cfg, string(doc))
		} else {
			k8s = append(k8s, string(doc))
		}
	}
	return strings.Join(cfg, "\n---\n"), strings.Join(k8s, "\n---\n"), nil
}

// generate runs Istio's translation for one set of objects; failures are in result.Error.
func generate(text string, o options, mc *meshconfig.MeshConfig) (res result) {
	config, kube, err := split(text)
	if err != nil {
		return result{Error: err.Error()}
	}
	configs, findings, err := parseConfigs(config)
	if err != nil {
		return result{Error: err.Error()}
	}
	res.Validation = findings
	var marshalErr error
	failed := test.Wrap(func(t test.Failer) {
		s := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
			Configs:                configs,
			KubernetesObjectString: kube,
			MeshConfig:             proto.Clone(mc).(*meshconfig.MeshConfig),
		})
		labels := map[string]string{}
		for k, v := range o.labels {
			labels[k] = v
		}
		proxy := s.SetupProxy(&model.Proxy{
			Type:            model.Router,
			ID:              "istio-ingressgateway." + o.namespace,
			ConfigNamespace: o.namespace,
			Labels:          labels,
			IPAddresses:     []string{o.proxyIP},
			Metadata: &model.NodeMetadata{
				Namespace:    o.namespace,
				Labels:       labels,
				IstioVersion: o.istioVersion,
			},
		})
		listeners := s.Listeners(proxy)
		routes := s.RoutesFromListeners(proxy, listeners)
		clusters := s.Clusters(proxy)
		endpoints := s.Endpoints(proxy)
		sort.Slice(listeners, func(i, j int) bool { return listeners[i].Name < listeners[j].Name })
		sort.Slice(routes, func(i, j int) bool { return routes[i].Name < routes[j].Name })
		sort.Slice(clusters, func(i, j int) bool { return clusters[i].Name < clusters[j].Name })
		sort.Slice(endpoints, func(i, j int) bool { return endpoints[i].ClusterName < endpoints[j].ClusterName })
		for _, m := range listeners {
			res.Listeners = appendJSON(res.Listeners, m, &marshalErr)
		}
		for _, m := range routes {
			res.Routes = appendJSON(res.Routes, m, &marshalErr)
		}
		for _, m := range clusters {
			res.Clusters = appendJSON(res.Clusters, m, &marshalErr)
		}
		for _, m := range endpoints {
			res.Endpoints = appendJSON(res.Endpoints, m, &marshalErr)
		}
	})
	if failed != nil {
		return result{Error: failed.Error(), Validation: findings}
	}
	if marshalErr != nil {
		return result{Error: "marshal: " + marshalErr.Error()}
	}
	return res
}

var marshaller = protojson.MarshalOptions{UseProtoNames: true}

func appendJSON(list []json.RawMessage, m proto.Message, errp *error) []json.RawMessage {
	data, err := marshaller.Marshal(m)
	if err != nil {
		if *errp == nil {
			*errp = err
		}
		return list
	}
	// protojson's output is not stable byte for byte; re-encode it through encoding/json.
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		if *errp == nil {
			*errp = err
		}
		return list
	}
	data, _ = json.Marshal(v)
	return append(list, data)
}

// parseConfigs turns the Istio documents into configs as istiod's Kubernetes config store
// would hold them (domain suffix cluster.local, which short host names are completed with;
// namespace "default" when none is given), and runs Istio's validation on each: what the
// admission webhook rejects is reported and left out, as it could not exist in a cluster.
func parseConfigs(text string) ([]config.Config, []finding, error) {
	findings := []finding{}
	var configs []config.Config
	created := time.Now()
	decoder := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(text), 512*1024)
	for {
		obj := crd.IstioKind{}
		err := decoder.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("cannot parse Istio object: %v", err)
		}
		if obj.Kind == "" {
			continue
		}
		gvk := obj.GroupVersionKind()
		name := fmt.Sprintf("%s %s/%s", obj.Kind, obj.Namespace, obj.Name)
		schema, ok := collections.PilotGatewayAPI().FindByGroupVersionAliasesKind(resource.FromKubernetesGVK(&gvk))
		if !ok {
			findings = append(findings, finding{Object: name, Error: "not a kind istiod reads (" + gvk.String() + ")"})
			continue
		}
		cfg, err := crd.ConvertObject(schema, &obj, "cluster.local")
		if err != nil {
			findings = append(findings, finding{Object: name, Error: err.Error()})
			continue
		}
		if cfg.Namespace == "" {
			cfg.Namespace = "default"
		}
		if cfg.CreationTimestamp.IsZero() {
			cfg.CreationTimestamp = created
		}
		warning, verr := schema.ValidateConfig(*cfg)
		if warning != nil {
			findings = append(findings, finding{Object: name, Warning: warning.Error()})
		}
		if verr != nil {
			findings = append(findings, finding{Object: name, Error: verr.Error()})
			continue
		}
		configs = append(configs, *cfg)
	}
	return configs, findings, nil
}
