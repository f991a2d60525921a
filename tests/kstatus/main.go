// kstatus-check prints what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, the library
// Flux's health checks use) computes for Kubernetes objects: one JSON object per input line,
// one `<status>\t<message>` output line each. tests/kstatus.rs feeds it Berth's resources.
package main

import (
	"bufio"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	line := 0
	for in.Scan() {
		line++
		// Decoded as the API machinery decodes objects: whole numbers as int64.
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(in.Bytes()); err != nil {
			fmt.Fprintf(os.Stderr, "line %d: not a Kubernetes object: %v\n", line, err)
			os.Exit(2)
		}
		result, err := status.Compute(object)
		if err != nil {
			fmt.Fprintf(os.Stderr, "line %d: kstatus: %v\n", line, err)
			os.Exit(1)
		}
		fmt.Printf("%s\t%s\n", result.Status, result.Message)
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "reading stdin: %v\n", err)
		os.Exit(2)
	}
}
