// Command conformance-server is the server under test of the Connect
// conformance runner (connectconformance --mode server): it reads a
// ServerCompatRequest from stdin, starts the conformance service through
// Palisade's server with the whole security chain (see package
// conformance), writes the ServerCompatResponse to stdout, and serves until
// SIGTERM or SIGINT, then drains. Run it through `make conformance`.
//
// Usage:
//
//	connectconformance --mode server --conf conformance/config.yaml -- bin/conformance-server [flags]
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/conformance"
	conformancev1 "github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1"
)

// maxRequestBytes bounds the ServerCompatRequest read from stdin.
const maxRequestBytes = 1 << 20

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "conformance-server:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("conformance-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clientID := fs.String("client-id", conformance.ProtocolClientID, "workload `SPIFFE ID` given to the runner's client certificate; the policy decides by it ("+conformance.UsersClientID+" requires a user token)")
	jwks := fs.String("jwks", "", "JWKS `file` of the keys that sign the token suite's tokens (written by conformance-authsuite); without it, every token is refused")
	logLevel := fs.String("log-level", "error", "server log `level` on stderr (debug, info, warn, error); the runner shows what the server prints")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	opts := conformance.Options{
		ClientID: *clientID,
		Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	}
	if *jwks != "" {
		v, err := conformance.NewVerifier(*jwks)
		if err != nil {
			return err
		}
		opts.Tokens = v
	}

	req := &conformancev1.ServerCompatRequest{}
	if err := readDelimited(stdin, req); err != nil {
		return fmt.Errorf("read ServerCompatRequest: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv, err := conformance.Start(ctx, req, opts)
	if err != nil {
		return err
	}
	if err := writeDelimited(stdout, srv.Response); err != nil {
		stop()
		_ = srv.Wait()
		return fmt.Errorf("write ServerCompatResponse: %w", err)
	}
	err = srv.Wait()
	if errors.Is(err, context.DeadlineExceeded) {
		// Usually connections the runner's clients opened and never sent a
		// request on: net/http waits 5 s before it counts those idle, and the
		// runner kills the server 5 s after SIGTERM. A call cut off here would
		// have failed its test case already.
		opts.Logger.Warn("connections still open after the grace period were closed", "error", err)
		return nil
	}
	return err
}

// readDelimited reads one message framed as the suite frames them: a 4-byte
// big-endian length, then the binary message.
func readDelimited(r io.Reader, msg proto.Message) error {
	var size uint32
	if err := binary.Read(r, binary.BigEndian, &size); err != nil {
		return fmt.Errorf("length prefix: %w", err)
	}
	if size > maxRequestBytes {
		return fmt.Errorf("message of %d bytes is larger than %d", size, maxRequestBytes)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("message: %w", err)
	}
	if err := proto.Unmarshal(buf, msg); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// writeDelimited writes msg framed like readDelimited reads it.
func writeDelimited(w io.Writer, msg proto.Message) error {
	data, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	if len(data) > maxRequestBytes {
		return errors.New("response too large")
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(data)), uint32(len(data)))
	_, err = w.Write(append(frame, data...))
	return err
}
