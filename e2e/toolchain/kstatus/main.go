// kstatus prints what Flux (and every tool built on sigs.k8s.io/cli-utils) concludes about
// Kubernetes objects: it reads one object or a List as JSON on stdin (`kubectl get -o json`)
// and prints one JSON line per object with the status kstatus computes for it.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var object unstructured.Unstructured
	if err := object.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("stdin is not a Kubernetes object or List in JSON: %w", err)
	}
	items := []unstructured.Unstructured{object}
	if object.IsList() {
		list, err := object.ToList()
		if err != nil {
			return err
		}
		items = list.Items
	}
	encoder := json.NewEncoder(out)
	for i := range items {
		computed, err := status.Compute(&items[i])
		if err != nil {
			return fmt.Errorf("%s %s: %w", items[i].GetKind(), items[i].GetName(), err)
		}
		line := result{items[i].GetKind(), items[i].GetName(), computed.Status.String(), computed.Message}
		if err := encoder.Encode(line); err != nil {
			return err
		}
	}
	return nil
}
