package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/engine"
)

// newModelCmd is `shoal model`: make synthetic llama2.c models and inspect
// checkpoints for the embedded engine backend.
func newModelCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "model", Short: "Create and inspect models for the embedded engine"}
	cmd.AddCommand(newModelGenCmd(), newModelInfoCmd())
	return cmd
}

func newModelGenCmd() *cobra.Command {
	opts := engine.DefaultGenOptions()
	var out string
	cmd := &cobra.Command{
		Use:   "gen --out DIR",
		Short: "Write a synthetic llama2.c model.bin and tokenizer.bin (random weights: word salad, not meaning)",
		Long: `Write a synthetic model in llama2.c's format: model.bin with random weights
drawn from --seed and tokenizer.bin with a vocabulary of English words. Its
text reads as words but means nothing; it exists so a node can serve real
compute with nothing downloaded. For real text, point an engine model at
llama2.c weights instead, e.g. stories15M.bin with llama2.c's tokenizer.bin.
The defaults are the built-in model's shapes (those of stories15M).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{errors.New("--out is required")}
			}
			if err := engine.GenerateModel(out, opts); err != nil {
				if errors.Is(err, engine.ErrInvalidConfig) {
					return usageError{err}
				}
				return err
			}
			ckpt := filepath.Join(out, "model.bin")
			info, err := engine.Inspect(ckpt)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "wrote %s and %s\n", ckpt, filepath.Join(out, "tokenizer.bin"))
			printModelInfo(w, info)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&out, "out", "", "directory to write model.bin and tokenizer.bin into")
	fl.IntVar(&opts.Dim, "dim", opts.Dim, "transformer width")
	fl.IntVar(&opts.HiddenDim, "hidden-dim", opts.HiddenDim, "feed-forward width")
	fl.IntVar(&opts.Layers, "layers", opts.Layers, "transformer layers")
	fl.IntVar(&opts.Heads, "heads", opts.Heads, "attention heads")
	fl.IntVar(&opts.KVHeads, "kv-heads", opts.KVHeads, "key/value heads (fewer than --heads: grouped-query attention)")
	fl.IntVar(&opts.Vocab, "vocab", opts.Vocab, "vocabulary size (at least 512)")
	fl.IntVar(&opts.SeqLen, "seq-len", opts.SeqLen, "context length in tokens")
	fl.Int64Var(&opts.Seed, "seed", opts.Seed, "random seed for the weights")
	return cmd
}

func newModelInfoCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info FILE",
		Short: "Print a checkpoint's (llama2.c or GGUF) shapes, parameter count and memory needs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := engine.Inspect(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			printModelInfo(cmd.OutOrStdout(), info)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func printModelInfo(w io.Writer, info engine.Info) {
	classifier := "separate"
	if info.SharedClassifier {
		classifier = "shared with embeddings"
	}
	fmt.Fprintf(w, "dim            %d\n", info.Dim)
	fmt.Fprintf(w, "hidden_dim     %d\n", info.HiddenDim)
	fmt.Fprintf(w, "layers         %d\n", info.Layers)
	fmt.Fprintf(w, "heads          %d (kv heads %d, head size %d)\n", info.Heads, info.KVHeads, info.HeadSize())
	fmt.Fprintf(w, "vocab          %d (classifier %s)\n", info.Vocab, classifier)
	fmt.Fprintf(w, "seq_len        %d\n", info.SeqLen)
	fmt.Fprintf(w, "parameters     %d (%.1fM)\n", info.Params, float64(info.Params)/1e6)
	fmt.Fprintf(w, "file           %s\n", mib(info.FileBytes))
	fmt.Fprintf(w, "weights fp32   %s\n", mib(info.FP32Bytes))
	fmt.Fprintf(w, "weights int8   %s (quantize = \"int8\")\n", mib(info.Int8Bytes))
	fmt.Fprintf(w, "kv cache       %s per sequence at full context\n", mib(info.KVBytesPerSeq))
}

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
