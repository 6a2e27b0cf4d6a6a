// sample-http: the test bed's HTTP sample app. It answers "HOSTNAME VERSION" (in a pod the
// hostname is the pod's name) on $PORT (default 8080), and "ok" on /healthz for readiness
// probes. With $TCP_PORT set it also greets every TCP connection there with "HOSTNAME\n"
// and closes it (the greeting devbed.samples' TCP servers send, for L4 listeners). On
// SIGTERM it stops accepting and lets requests in flight finish, as a rolling update expects.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	host, _ := os.Hostname()
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	version := os.Getenv("VERSION")
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s %s\n", host, version)
	})
	server := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	if tcpPort := os.Getenv("TCP_PORT"); tcpPort != "" {
		go greet(":"+tcpPort, host)
	}
	log.Printf("listening on :%s as %s", port, host)
	if err := server.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// greet answers each TCP connection on addr with the host's name, then closes it.
func greet(addr, host string) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("greeting TCP connections on %s", addr)
	for {
		conn, err := listener.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer conn.Close()
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = fmt.Fprintf(conn, "%s\n", host)
		}()
	}
}
