package httpapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// compressMin is the smallest body worth compressing.
const compressMin = 1024

// codec compresses response bodies and decompresses request bodies. The
// zstd encoder is safe for concurrent EncodeAll; gzip writers are pooled.
type codec struct {
	zenc  *zstd.Encoder
	gzips sync.Pool
}

func newCodec() *codec {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	c := &codec{zenc: enc}
	c.gzips.New = func() any {
		w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
		return w
	}
	return c
}

// chooseEncoding picks the response encoding Accept-Encoding allows: the
// one with the highest quality (zstd on a tie), "" for none. A coding
// listed with q=0 is refused, one not listed takes the quality of "*",
// and a malformed quality refuses its coding (RFC 9110 12.5.3).
func chooseEncoding(h string) string {
	if h == "" {
		return ""
	}
	q := map[string]float64{}
	for _, part := range strings.Split(h, ",") {
		name, params, _ := strings.Cut(part, ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		q[name] = qvalue(params)
	}
	best, bestQ := "", 0.0
	for _, enc := range []string{"zstd", "gzip"} {
		v, ok := q[enc]
		if !ok {
			v = q["*"]
		}
		if v > bestQ {
			best, bestQ = enc, v
		}
	}
	return best
}

// qvalue reads the q parameter among a coding's parameters: 1 when absent,
// 0 when malformed or out of range.
func qvalue(params string) float64 {
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f < 0 || f > 1 {
			return 0
		}
		return f
	}
	return 1
}

// reqInfo is what the middleware attaches to a request's context: one
// value rather than one per field, since each is an allocation per request.
// It is the context too (infoCtx), which saves context.WithValue's.
type reqInfo struct {
	id    string
	codec *codec
	// The X-Request-Id and X-Shoal-Node header values, in the same
	// allocation.
	hdr [2]string
}

type reqInfoKey struct{}

// infoCtx is a context carrying a reqInfo, as context.WithValue would
// with reqInfoKey, in the same allocation as the reqInfo. Everything else
// is the parent's: derived contexts find its cancellation as they would
// the parent's.
type infoCtx struct {
	context.Context
	info reqInfo
}

func (c *infoCtx) Value(key any) any {
	if _, ok := key.(reqInfoKey); ok {
		return &c.info
	}
	return c.Context.Value(key)
}

func infoOf(ctx context.Context) *reqInfo {
	ri, _ := ctx.Value(reqInfoKey{}).(*reqInfo)
	return ri
}

// writeJSON encodes v as the response, compressed when the client accepts
// it and the body is large enough to gain from it.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	// The encoder writes what json.Marshal returns, and the newline, into
	// a pooled buffer; the writer copies the bytes before it is reused.
	jb := getJSONBuf()
	defer putJSONBuf(jb)
	var body []byte
	if a, ok := v.(*chatAnswer); ok {
		// Written where the buffer has room (Write then copies onto itself), so any growth stays
		// in the pooled buffer.
		jb.buf.Write(append(appendChatAnswer(jb.buf.AvailableBuffer(), a), '\n'))
		body = jb.buf.Bytes()
	} else if err := jb.enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"error":{"message":"response encoding failed","type":"server_error","param":null,"code":"internal_error"}}` + "\n")
	} else {
		body = jb.buf.Bytes()
	}
	h := w.Header()
	h["Content-Type"] = hdrJSON[:1:1]
	var c *codec
	if ri := infoOf(r.Context()); ri != nil {
		c = ri.codec
	}
	if c != nil && len(body) >= compressMin {
		h.Add("Vary", "Accept-Encoding")
		switch chooseEncoding(HeaderValue(r.Header, "Accept-Encoding")) {
		case "zstd":
			body = c.zenc.EncodeAll(body, nil)
			h.Set("Content-Encoding", "zstd")
		case "gzip":
			var buf bytes.Buffer
			gw := c.gzips.Get().(*gzip.Writer)
			gw.Reset(&buf)
			_, _ = gw.Write(body)
			_ = gw.Close()
			c.gzips.Put(gw)
			body = buf.Bytes()
			h.Set("Content-Encoding", "gzip")
		}
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// HeaderValue is h.Get(key) for a key already in canonical form, as every
// name shoal asks for is: the server stores the names it receives in that
// form, so the lookup skips Get's canonicalization, which was a tenth of a
// cache hit's handler time with ten lookups a request. A name given in
// another form finds nothing; TestHeaderNamesAreCanonical checks every
// call.
func HeaderValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// readBody enforces the content type, decompresses gzip or zstd bodies and
// bounds the size after decompression, so a compressed bomb is refused too.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *Error) {
	// The usual value needs no parsing (ParseMediaType allocates its
	// parameter map).
	if ct := HeaderValue(r.Header, "Content-Type"); ct != "" && ct != "application/json" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return nil, &Error{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_media_type",
				Message: "Content-Type must be application/json (curl: -H 'Content-Type: application/json')"}
		}
	}
	var rd io.Reader = r.Body
	if r.ContentLength <= 0 || r.ContentLength > limit {
		// A declared length within the limit bounds the body already (the
		// server reads no further); otherwise the limit reader does, and
		// tells the server to close the connection once it is exceeded.
		rd = http.MaxBytesReader(w, r.Body, limit)
	}
	// Only a decompressed body can outgrow what was read; for a plain one
	// the bound above is the limit.
	bounded := false
	switch enc := strings.ToLower(strings.TrimSpace(HeaderValue(r.Header, "Content-Encoding"))); enc {
	case "", "identity":
		bounded = true
	case "gzip":
		gz, err := gzip.NewReader(rd)
		if err != nil {
			return nil, badRequest("invalid_body", "gzip request body is corrupt: "+err.Error())
		}
		defer gz.Close()
		rd = gz
	case "zstd":
		zr, err := zstd.NewReader(rd, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(limit)*2))
		if err != nil {
			return nil, badRequest("invalid_body", "zstd request body is corrupt: "+err.Error())
		}
		defer zr.Close()
		rd = zr
	default:
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_encoding",
			Message: "Content-Encoding must be gzip, zstd or identity, got " + enc}
	}
	if !bounded {
		rd = io.LimitReader(rd, limit+1)
	}
	data, err := io.ReadAll(rd)
	switch {
	case tooLarge(err) || int64(len(data)) > limit ||
		// A zstd frame that asks for a window (or content) beyond the
		// decoder's memory bound is too large, as a gzip bomb is.
		errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "body_too_large",
			Message: "request body is larger than the node's limit of " + strconv.FormatInt(limit, 10) + " bytes"}
	case err != nil:
		return nil, badRequest("invalid_body", "reading request body: "+err.Error())
	case len(bytes.TrimSpace(data)) == 0:
		return nil, badRequest("invalid_json", "request body is empty; send a JSON object")
	}
	return data, nil
}

// tooLarge reports a MaxBytesReader's error; apart from errors.As's
// target, which escapes, so a request with no error does not pay for it.
func tooLarge(err error) bool {
	if err == nil {
		return false
	}
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// requestID returns the request's ID as set by the middleware.
func requestID(ctx context.Context) string {
	if ri := infoOf(ctx); ri != nil {
		return ri.id
	}
	return ""
}

// newRequestID returns 24 random hex digits. The IDs only correlate logs
// and answers, so math/rand/v2's generator (ChaCha8, seeded by the
// runtime) is enough; crypto/rand took a tenth of a cache hit's handler.
func newRequestID() string {
	var b [12]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint32(b[8:], rand.Uint32())
	return hex.EncodeToString(b[:])
}

// validRequestID accepts client IDs that are safe to echo in a header.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.:", c)) {
			return false
		}
	}
	return true
}

// Middleware stamps every response with X-Request-ID and X-Shoal-Node,
// lets writeJSON compress answers, and turns a handler panic into a 500
// instead of a dropped connection.
func Middleware(node string, logger *slog.Logger, next http.Handler) http.Handler {
	c := newCodec()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Header.Get would canonicalize "X-Request-ID" (an allocation) on
		// every request; this is its canonical form.
		id := ""
		if v := r.Header["X-Request-Id"]; len(v) > 0 {
			id = v[0]
		}
		if !validRequestID(id) {
			id = newRequestID()
		}
		// The context value and both header values in one allocation; the
		// keys are canonical already.
		ctx := &infoCtx{Context: r.Context(), info: reqInfo{id: id, codec: c, hdr: [2]string{id, node}}}
		ri := &ctx.info
		h := w.Header()
		h["X-Request-Id"] = ri.hdr[0:1:1]
		h["X-Shoal-Node"] = ri.hdr[1:2:2]
		r = r.WithContext(ctx)
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				logger.Error("handler panic", "path", r.URL.Path, "request_id", id, "panic", p)
				writeError(w, r, &Error{Status: http.StatusInternalServerError, Type: "server_error", Code: "internal_error", Message: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// Methods wraps h so other methods get an OpenAI-style 405.
func Methods(h http.HandlerFunc, allowed ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for _, m := range allowed {
			if r.Method == m {
				h(w, r)
				return
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, r, &Error{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error", Code: "method_not_allowed",
			Message: r.Method + " is not allowed on " + r.URL.Path + "; use " + strings.Join(allowed, " or ")})
	}
}

// NotFound answers a path no endpoint serves with an OpenAI-style 404.
func NotFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, r, &Error{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "not_found",
		Message: "no endpoint at " + r.URL.Path + "; see /v1/chat/completions, /v1/completions, /v1/models, /v1/infer, /health, /metrics"})
}

// parseTimeout reads X-Shoal-Timeout: a Go duration ("2s", "500ms") or a
// number of seconds.
func parseTimeout(v string) (time.Duration, *Error) {
	v = strings.TrimSpace(v)
	d, err := time.ParseDuration(v)
	if err != nil {
		var secs float64
		if e := json.Unmarshal([]byte(v), &secs); e != nil {
			return 0, badParam("X-Shoal-Timeout", "X-Shoal-Timeout must be a duration like 2s or 500ms, got "+v)
		}
		// Past ~292 years the conversion would wrap negative; any such
		// value means "as long as the server allows".
		d = time.Duration(math.MaxInt64)
		if ns := secs * float64(time.Second); ns < math.MaxInt64 {
			d = time.Duration(ns)
		}
	}
	if d <= 0 {
		return 0, badParam("X-Shoal-Timeout", "X-Shoal-Timeout must be positive, got "+v)
	}
	return d, nil
}
