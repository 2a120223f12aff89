// Command pause is the process of a pod's sandbox container: it holds the pod's namespaces open
// and does nothing else. Like Kubernetes' own pause it sleeps until SIGTERM or SIGINT (then
// exits 0) and, when it runs as PID 1 of a PID namespace shared by the pod, reaps the zombies
// the kernel reparents to it. `pause -v` prints its version.
//
// Built static (CGO_ENABLED=0) by e2e/toolchain/build.sh, so an image holding only this file
// works.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped by build.sh (-X main.version=$PAUSE_VERSION).
var version = "unknown"

func main() {
	if len(os.Args) > 1 {
		if len(os.Args) == 2 && os.Args[1] == "-v" {
			fmt.Printf("pause (tenantry) %s\n", version)
			return
		}
		fmt.Fprintf(os.Stderr, "usage: %s [-v]\n", os.Args[0])
		os.Exit(2)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "warning: pause should be the first process")
	}
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "shutting down, got signal: %v\n", sig)
		os.Exit(0)
	}
}

// reap collects every exited child without blocking. SIGCHLD signals coalesce, so one
// notification may stand for several children.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
