// Command shoal runs and operates a shoal inference cluster; the commands
// live in package cli.
package main

import (
	"context"
	"os"

	"github.com/shoal-dev/shoal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
