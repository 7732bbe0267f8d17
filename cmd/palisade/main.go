// Command palisade is the operator's tool for a Palisade deployment: it mints
// the development PKI, rotates token signing keys, gets tokens for people,
// measures what the security chain costs and puts the services under load.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand: `palisade <name> ...`, or a group of them.
type command struct {
	summary string
	run     func(args []string) error // nil for a group
	sub     map[string]command
}

func commands() map[string]command {
	return map[string]command{
		"bench": {summary: "measure what security costs: Palisade's chain against bare Connect and grpc-go", run: benchCmd},
		"certs": {summary: "development PKI", sub: map[string]command{
			"init":   {summary: "create a CA and the demo's workload and client certificates", run: certsInit},
			"issue":  {summary: "issue a workload certificate for a new service", run: certsIssue},
			"rotate": {summary: "re-issue one leaf (same identity, new key)", run: certsRotate},
			"revoke": {summary: "add a certificate to the dev CA's revocation list", run: certsRevoke},
		}},
		"keys": {summary: "token signing keys", sub: map[string]command{
			"rotate": {summary: "add a signing key; retire the oldest", run: keysRotate},
			"list":   {summary: "list the signing keys", run: keysList},
		}},
		"policy": {summary: "authorization policies", sub: map[string]command{
			"eval": {summary: "evaluate a decision for an input document and explain it", run: policyEval},
			"test": {summary: "run a policy layer's rego tests (on the base policy) with coverage", run: policyTest},
		}},
		"new": {summary: "start a new service in its own module", sub: map[string]command{
			"service": {summary: "write a service's module (proto, generated code, handlers, policy, main.go on the kit, Makefile)", run: newService},
		}},
		"token": {summary: "print an access token for a user (logs in over mTLS)", run: tokenCmd},
		"load":  {summary: "drive calls through the full chain and report errors, calls/s, latency; --soak checks memory", run: loadCmd},

		"bench-fanout": {summary: "measure the user change feed fanned out to 1 to 1,000 subscribers, against Redis pub/sub", run: benchFanoutCmd},
	}
}

func main() {
	err := dispatch(os.Stderr, "palisade", commands(), os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "palisade:", err)
		os.Exit(1)
	}
}

func dispatch(w io.Writer, prefix string, cmds map[string]command, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(w, prefix, cmds)
		if len(args) == 0 {
			return errors.New("missing command")
		}
		return flag.ErrHelp
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		usage(w, prefix, cmds)
		return fmt.Errorf("unknown command %q", strings.Join(append([]string{prefix}, args[0]), " "))
	}
	if cmd.run != nil {
		return cmd.run(args[1:])
	}
	return dispatch(w, prefix+" "+args[0], cmd.sub, args[1:])
}

func usage(w io.Writer, prefix string, cmds map[string]command) {
	fmt.Fprintf(w, "Usage: %s <command> [flags]\n\nCommands:\n", prefix)
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun '%s <command> --help' for a command's flags.\n", prefix)
}

// newFlagSet returns a FlagSet for a subcommand whose --help prints the
// description and the flags.
// palisadeHome is the demo state directory: $PALISADE_HOME, as make up and
// the scripts use it, or .palisade.
func palisadeHome() string {
	if h := os.Getenv("PALISADE_HOME"); h != "" {
		return h
	}
	return ".palisade"
}

func newFlagSet(name, description string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nUsage: %s [flags]\n\nFlags:\n", strings.TrimSpace(description), name)
		fs.PrintDefaults()
	}
	return fs
}
