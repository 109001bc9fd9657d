// pause: the process that holds a pod sandbox's namespaces. PID 1 of the
// sandbox: it reaps orphaned children and exits 0 on SIGINT/SIGTERM, like
// Kubernetes' own pause (a C program, not in any Go module).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
