// Command kube-network-policies runs SIG Network's NetworkPolicy enforcer
// (sigs.k8s.io/kube-network-policies, pkg/networkpolicy) on one node, reading the API
// through a kubeconfig file instead of a service account. Built by stack/node_build.py.
//
// The kernel hands it the first packet of each new connection through an NFQUEUE and it
// answers accept or drop from the NetworkPolicies of the pods at either end. With an
// NFQUEUE hook without --queue-bypass, packets queued while it is not running are dropped.
//
// The enforcer also tries to install its own nftables hook (table inet
// kube-network-policies, a `queue` rule). On kernels without CONFIG_NFT_QUEUE that
// transaction fails as a whole ("netlink receive: no such file or directory"): it is
// logged and retried, nothing is installed, and the enforcer keeps serving the queue.
// The caller installs the same hook with iptables (xt NFQUEUE) for IPv4: in mangle
// POSTROUTING, new connections from or to the pod range, not from uid 0, go to
// `NFQUEUE --queue-num <-nfqueue-id>`.
//
// NRI stays enabled: without a runtime NRI socket it only logs that it cannot connect,
// whereas disabling it makes v0.8.0 panic on the first packet from a non-pod address.
//
// Flags:
//
//	-kubeconfig PATH              kubeconfig of the API server (required)
//	-node-name NAME               the Node this runs on (required)
//	-nfqueue-id N                 NFQUEUE number to read (default 100)
//	-local-pods-only              watch only pods with spec.nodeName=NAME (an API field
//	                              selector: less memory, but a policy peer selecting pods
//	                              of other nodes then no longer matches them)
//	-fail-open                    accept what it cannot judge (kernel queue full, bad packet)
//	-netfilter-bug-1766-fix       DNS in PREROUTING (old kernels; only in its nftables hook)
//	-metrics-bind-address H:P     serve Prometheus /metrics there (default: no listener)
//	-v N                          klog verbosity (2 logs every verdict)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() { os.Exit(run()) }

func run() int {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file of the API server (required)")
	nodeName := flag.String("node-name", "", "name of the Node this runs on (required)")
	queueID := flag.Int("nfqueue-id", 100, "NFQUEUE number to read packets from")
	localPodsOnly := flag.Bool("local-pods-only", false,
		"watch only the pods of -node-name (policy peers on other nodes then do not match)")
	failOpen := flag.Bool("fail-open", false,
		"accept packets it cannot judge (kernel queue full, unparsable) instead of dropping")
	bug1766 := flag.Bool("netfilter-bug-1766-fix", false,
		"process DNS in PREROUTING (kernels before 6.12; only in its own nftables hook)")
	metricsAddr := flag.String("metrics-bind-address", "",
		"host:port to serve Prometheus /metrics on (empty: no listener)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()
	if *kubeconfig == "" || *nodeName == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: kube-network-policies -kubeconfig PATH -node-name NAME [flags]")
		flag.PrintDefaults()
		return 2
	}

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.ErrorS(err, "reading the kubeconfig", "path", *kubeconfig)
		return 1
	}
	config.UserAgent = "kube-network-policies"
	config.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	config.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.ErrorS(err, "creating the API client")
		return 1
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	podFactory := factory
	if *localPodsOnly {
		selector := fields.OneTermEqualSelector("spec.nodeName", *nodeName).String()
		podFactory = informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }))
	}
	controller, err := networkpolicy.NewController(
		client,
		factory.Networking().V1().NetworkPolicies(),
		factory.Core().V1().Namespaces(),
		podFactory.Core().V1().Pods(),
		nil, nil, nil, nil, // no (Baseline)AdminNetworkPolicy
		networkpolicy.Config{
			QueueID:             *queueID,
			NodeName:            *nodeName,
			FailOpen:            *failOpen,
			NetfilterBug1766Fix: *bug1766,
		},
	)
	if err != nil {
		klog.ErrorS(err, "creating the controller")
		return 1
	}

	if *metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
			klog.ErrorS(err, "bad -metrics-bind-address", "address", *metricsAddr)
			return 2
		}
		http.Handle("/metrics", promhttp.Handler())
		go func() { klog.ErrorS(http.ListenAndServe(*metricsAddr, nil), "metrics listener") }()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- controller.Run(ctx) }()
	factory.Start(ctx.Done())
	podFactory.Start(ctx.Done())

	select {
	case err := <-done:
		if ctx.Err() == nil { // stopped by itself, e.g. the NFQUEUE could not be opened
			klog.ErrorS(errors.Join(err, errors.New("stopped")), "controller")
			return 1
		}
	case <-ctx.Done():
		// Run closes the queue and removes its nftables table when it returns.
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	return 0
}
