package httpapi

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/textproto"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/router"
	"github.com/stretchr/testify/require"
)

// TestHeaderNamesAreCanonical finds every HeaderValue call in the packages
// that use it and checks that the name it asks for is canonical, since a
// name in any other form would silently find nothing (a bypassed
// Cache-Control, a forward header that is never stripped).
func TestHeaderNamesAreCanonical(t *testing.T) {
	named := map[string]string{
		"router.HeaderForwarded": router.HeaderForwarded,
	}
	calls := 0
	for _, dir := range []string{".", "../node"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		require.NoError(t, err)
		fset := token.NewFileSet()
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(fset, f, nil, 0)
			require.NoError(t, err)
			ast.Inspect(file, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) != 2 {
					return true
				}
				switch fn := call.Fun.(type) {
				case *ast.Ident:
					if fn.Name != "HeaderValue" {
						return true
					}
				case *ast.SelectorExpr:
					if fn.Sel.Name != "HeaderValue" {
						return true
					}
				default:
					return true
				}
				calls++
				at := fset.Position(call.Pos())
				var name string
				switch arg := call.Args[1].(type) {
				case *ast.BasicLit:
					name, err = strconv.Unquote(arg.Value)
					require.NoError(t, err, at)
				case *ast.SelectorExpr:
					x, _ := arg.X.(*ast.Ident)
					require.NotNil(t, x, at)
					v, known := named[x.Name+"."+arg.Sel.Name]
					require.True(t, known, "%s: add %s.%s to this test's names", at, x.Name, arg.Sel.Name)
					name = v
				default:
					t.Fatalf("%s: HeaderValue's name is not a literal or a named constant", at)
				}
				require.Equal(t, textproto.CanonicalMIMEHeaderKey(name), name, "%s: header name not canonical", at)
				return true
			})
		}
	}
	require.GreaterOrEqual(t, calls, 10, "the scan found HeaderValue's calls")
}

func TestHeaderValueIsGetForCanonicalNames(t *testing.T) {
	h := http.Header{}
	h.Add("cache-control", "no-store")
	h.Add("Cache-Control", "no-cache")
	h["X-Empty"] = nil
	for _, name := range []string{"Cache-Control", "X-Empty", "X-Missing"} {
		require.Equal(t, h.Get(name), HeaderValue(h, name), name)
	}
}
