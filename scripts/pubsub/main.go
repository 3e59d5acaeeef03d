// Google's in-memory Pub/Sub fake server (cloud.google.com/go/pubsub/v2/pstest) on a fixed
// address, for the integration tests. Built and started by scripts/services.sh.
//
//	pstest-server -addr 127.0.0.1:8085          # serve until SIGTERM/SIGINT
//	pstest-server -addr 127.0.0.1:8085 -probe   # exit 0 when a server there answers an RPC
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Like the real service: a publish request may carry up to 10 MB (gRPC's default is 4 MiB).
const maxRequestBytes = 20 << 20

// The Node client sends ackDeadlineSeconds 0 when unset (the service then uses 10 s); this
// pstest refuses 0 unless SetMinAckDeadline was called, so default it here.
type ackDeadlineDefault struct{}

func (ackDeadlineDefault) React(request interface{}) (bool, interface{}, error) {
	if sub, ok := request.(*pubsubpb.Subscription); ok && sub.AckDeadlineSeconds == 0 {
		sub.AckDeadlineSeconds = 10
	}
	return false, nil, nil // not handled: pstest's own CreateSubscription runs next
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8085", "listen address")
	probe := flag.Bool("probe", false, "check that a server at -addr answers, then exit")
	flag.Parse()
	if *probe {
		os.Exit(probeServer(*addr))
	}

	// pstest's own state and handlers; served below by a gRPC server with the service's limits.
	// (pstest also serves them on a throwaway loopback port of its own; nothing uses that one.)
	fake := pstest.NewServerWithAddress("127.0.0.1:0",
		pstest.ServerReactorOption{FuncName: "CreateSubscription", Reactor: ackDeadlineDefault{}})
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("pstest-server: %v", err)
	}
	server := grpc.NewServer(grpc.MaxRecvMsgSize(maxRequestBytes), grpc.MaxSendMsgSize(maxRequestBytes))
	pubsubpb.RegisterPublisherServer(server, &fake.GServer)
	pubsubpb.RegisterSubscriberServer(server, &fake.GServer)
	pubsubpb.RegisterSchemaServiceServer(server, &fake.GServer)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Stop()
	}()
	log.Printf("pstest-server: serving Pub/Sub on %s", listener.Addr())
	if err := server.Serve(listener); err != nil {
		log.Fatalf("pstest-server: %v", err)
	}
}

func probeServer(addr string) int {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = pubsubpb.NewPublisherClient(conn).ListTopics(ctx, &pubsubpb.ListTopicsRequest{Project: "projects/outbox-probe"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
