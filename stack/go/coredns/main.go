// Command coredns is CoreDNS (github.com/coredns/coredns) with only the plugins a preview
// node's cluster DNS needs, built by stack/node_build.py in a wrapper module of its own.
//
// There is no `forward` plugin (nor any other that sends queries on): a name outside the
// zones the Corefile serves gets no answer from elsewhere, so no query leaves the machine.
// With the server block keyed by the cluster's zones, such a name is REFUSED (keyed by
// `.`, it gets SERVFAIL). `kubernetes` reads the API through a kubeconfig file:
//
//	cluster.local in-addr.arpa ip6.arpa:53 {
//	    bind 10.88.0.1
//	    errors
//	    health 10.88.0.1:8080
//	    ready 10.88.0.1:8181
//	    kubernetes cluster.local in-addr.arpa ip6.arpa {
//	        kubeconfig /path/to/kubeconfig
//	    }
//	    cache 30
//	}
//
// The kubernetes plugin's own imports also register metadata, prometheus and transfer
// (they show in -plugins), but only the directives below can be used in a Corefile.
// Flags are CoreDNS's own (-conf, -plugins, -version, -dns.port, ...).
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is CoreDNS's execution order (core/dnsserver/zdirectives.go) restricted
// to the plugins above: a plugin sees the effects of every plugin after it.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	coremain.Run()
}
