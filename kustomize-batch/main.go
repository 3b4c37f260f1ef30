// Command abtest-kustomize renders several kustomization directories in one process, each
// exactly as `kubectl kustomize DIR` does: the same command code of the kustomize release
// kubectl embeds (sigs.k8s.io/kustomize/kustomize/v5, commands/build), with its default
// flags. Starting kubectl costs about 0.1 s of CPU a directory; a rollout's offline gate
// renders one directory per stage.
//
//	abtest-kustomize -version      prints "kustomize <version>"
//	abtest-kustomize DIR...        prints a JSON array, one {"dir", "yaml", "error"} per DIR, in order
//
// A directory that fails has its error's text and no yaml; the others are still rendered.
// The exit code is 0 unless the arguments or the output fail.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"sigs.k8s.io/kustomize/kustomize/v5/commands/build"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

type result struct {
	Dir   string `json:"dir"`
	YAML  string `json:"yaml"`
	Error string `json:"error"`
}

// kustomizeVersion is the version of the kustomize module this program is built with, as
// `kubectl version --client` reports its own ("v5.5.0").
func kustomizeVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == "sigs.k8s.io/kustomize/kustomize/v5" {
			if dep.Replace != nil {
				return dep.Replace.Version
			}
			return dep.Version
		}
	}
	return "unknown"
}

// render runs the build command once. Its flags live in package variables of the build
// package, so directories are rendered one after another, each with a fresh command whose
// flag definitions reset those variables to their defaults.
func render(fs filesys.FileSystem, dir string) result {
	var out, errs bytes.Buffer
	cmd := build.NewCmdBuild(fs, build.MakeHelp("abtest-kustomize", "build"), &out)
	cmd.SetArgs([]string{dir})
	cmd.SetOut(io.Discard)
	cmd.SetErr(&errs)
	cmd.SilenceErrors = true
	if err := cmd.Execute(); err != nil {
		return result{Dir: dir, Error: err.Error()}
	}
	return result{Dir: dir, YAML: out.String()}
}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && args[0] == "-version" {
		fmt.Printf("kustomize %s\n", kustomizeVersion())
		return
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: abtest-kustomize -version | abtest-kustomize DIR...")
		os.Exit(2)
	}
	fs := filesys.MakeFsOnDisk()
	results := make([]result, 0, len(args))
	for _, dir := range args {
		results = append(results, render(fs, dir))
	}
	encoder := json.NewEncoder(os.Stdout)
	if err := encoder.Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "abtest-kustomize:", err)
		os.Exit(1)
	}
}
