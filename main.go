// Command shoal runs and operates a shoal inference cluster.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/shoal-dev/shoal/node"
)

func main() {
	ctx := context.Background()
	root := newRootCmd()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "shoal:", err)
		var ce *node.ConfigError
		var ue usageError
		if errors.As(err, &ce) || errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
