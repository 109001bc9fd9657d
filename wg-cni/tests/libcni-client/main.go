// cni-client: a minimal CNI runtime written against libcni, the library
// containerd and CRI-O use. The project's end-to-end tests and benchmarks
// drive wg-cni (and the reference plugins) through it.
//
//	cni-client add|check|del CONFLIST CONTAINER_ID NETNS IFNAME
//
// Environment: CNI_PATH (colon-separated plugin directories), CNI_CACHE_DIR
// (private result cache). ADD prints the result JSON on stdout. Every verb
// prints "elapsed_ns=N" on stderr, the wall time of the libcni call alone.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 6 {
		fail("usage: %s add|check|del CONFLIST CONTAINER_ID NETNS IFNAME", filepath.Base(os.Args[0]))
	}
	action, confPath, cid, netns, ifname := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	raw, err := os.ReadFile(confPath)
	if err != nil {
		fail("reading %s: %v", confPath, err)
	}
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		fail("parsing %s: %v", confPath, err)
	}
	paths := strings.Split(os.Getenv("CNI_PATH"), ":")
	cni := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: cid,
		NetNS:       netns,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", cid},
		},
	}
	ctx := context.Background()
	start := time.Now()
	switch action {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		elapsed := time.Since(start)
		if err != nil {
			fail("ADD: %v", err)
		}
		// Re-read the cached result the way a runtime would, to prove libcni
		// parses the version we emitted.
		cached, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil || cached == nil {
			fail("reading the cached result: %v", err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			fail("encoding the result: %v", err)
		}
		fmt.Println(string(out))
		fmt.Fprintf(os.Stderr, "elapsed_ns=%d\n", elapsed.Nanoseconds())
	case "check":
		err := cni.CheckNetworkList(ctx, list, rt)
		elapsed := time.Since(start)
		if err != nil {
			fail("CHECK: %v", err)
		}
		fmt.Fprintf(os.Stderr, "elapsed_ns=%d\n", elapsed.Nanoseconds())
	case "del":
		err := cni.DelNetworkList(ctx, list, rt)
		elapsed := time.Since(start)
		if err != nil {
			fail("DEL: %v", err)
		}
		fmt.Fprintf(os.Stderr, "elapsed_ns=%d\n", elapsed.Nanoseconds())
	default:
		fail("unknown action %q", action)
	}
}
