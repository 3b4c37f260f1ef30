package main

// The -analyze mode: Istio's configuration analyzers, as `istioctl analyze --use-kube=false
// --all-namespaces` runs them on files (istioctl/pkg/analyze): every analyzer of
// analyzers.AllCombined(), Istio's default mesh config, the default ingress gateway
// resources Istio adds when no cluster is read (AddDefaultResources), and the objects read
// the way istioctl reads files (AddReaderKubeSource). No Kubernetes is contacted.

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"istio.io/istio/pkg/config/analysis/analyzers"
	"istio.io/istio/pkg/config/analysis/local"
	"istio.io/istio/pkg/config/resource"
)

// analysisFinding is one message of Istio's analyzers.
type analysisFinding struct {
	Code    string `json:"code"`
	Level   string `json:"level"`
	Object  string `json:"object"`
	Message string `json:"message"`
}

type analysisResult struct {
	ID       string            `json:"id,omitempty"`
	Error    string            `json:"error,omitempty"`
	Analysis []analysisFinding `json:"analysis"`
	// Skipped are the analyzers Istio left out because an input kind is not served by the
	// sources (as istioctl analyze -v lists them).
	Skipped []string `json:"skipped"`
}

// analyze runs Istio's analyzers over the objects of one YAML stream. A file that does not
// parse is an error of the result (istioctl prints it and goes on with what it read).
//
// With runtimeKinds, Services, Namespaces, Pods, Nodes and Secrets are read from the files as
// well (AddTestReaderKubeSource, what Istio's own analyzer tests use); istioctl's file mode
// leaves them out, and with them every analyzer that needs one (Skipped lists them).
func analyze(text, istioNamespace string, runtimeKinds bool) (res analysisResult) {
	res.Analysis = []analysisFinding{}
	sa := local.NewSourceAnalyzer(analyzers.AllCombined(), "", resource.Namespace(istioNamespace), nil)
	// The first call decides which kinds the one file source reads; the defaults then
	// go into the same source.
	add := sa.AddReaderKubeSource
	if runtimeKinds {
		add = sa.AddTestReaderKubeSource
	}
	if err := add([]local.ReaderSource{{Name: "input", Reader: strings.NewReader(text)}}); err != nil {
		res.Error = fmt.Sprintf("reading objects: %v", err)
		return res
	}
	if err := sa.AddDefaultResources(); err != nil {
		res.Error = fmt.Sprintf("default resources: %v", err)
		return res
	}
	cancel := make(chan struct{})
	defer close(cancel)
	out, err := sa.Analyze(cancel)
	if err != nil {
		res.Error = fmt.Sprintf("analysis: %v", err)
		return res
	}
	res.Skipped = append([]string{}, out.SkippedAnalyzers...)
	for i := range out.Messages {
		m := &out.Messages[i]
		object := ""
		if m.Resource != nil && m.Resource.Origin != nil {
			object = m.Resource.Origin.FriendlyName()
		}
		res.Analysis = append(res.Analysis, analysisFinding{
			Code:    m.Type.Code(),
			Level:   m.Type.Level().String(),
			Object:  object,
			Message: fmt.Sprintf(m.Type.Template(), m.Parameters...),
		})
	}
	return res
}

func runAnalyzeBatch(in io.Reader, out *bufio.Writer, istioNamespace string, runtimeKinds bool) error {
	return eachCase(in, out, func(c input) any {
		res := analyze(c.YAML, istioNamespace, runtimeKinds)
		res.ID = c.ID
		return res
	})
}
