// Command browser drives a running headless Chromium over the DevTools
// protocol (CDP) for scripts/browser-test.sh: it opens a page in a new tab,
// polls it until document.title is the wanted one (the demo page sets
// "sluice-ok" after 10 verified WebSocket round trips) or a deadline passes,
// prints the page's status line, saves a screenshot and closes the tab.
// Only the standard library and github.com/coder/websocket: no Node, no
// downloaded browser.
//
//	chromium --headless --remote-debugging-port=0 --user-data-dir=DIR ... &
//	go run ./scripts/browser -user-data-dir DIR -url https://localhost:8443/ -screenshot page.png
//
// Exit status 0 when the title was reached, 1 otherwise (with the page's
// state, its error box and its console messages on stderr).
//
// With -status-backend POOL/ADDRESS it checks sluice's status page (the
// admin server's /) instead: the page must list the backends of POOL, a
// click on the Drain button of ADDRESS must turn its state cell to "drain"
// (and /api/v1/state must agree), then Ready restores it. The screenshot
// shows the drained backend.
//
//	go run ./scripts/browser -user-data-dir DIR -url http://127.0.0.1:9090/ -status-backend game-ws/127.0.0.1:9301 -screenshot status.png
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

func main() {
	dir := flag.String("user-data-dir", "", "Chromium's --user-data-dir; its DevToolsActivePort file names the debugging port")
	endpoint := flag.String("devtools", "", "DevTools HTTP endpoint host:port (instead of -user-data-dir)")
	pageURL := flag.String("url", "", "page to open")
	want := flag.String("title", "sluice-ok", "document.title that means success")
	timeout := flag.Duration("timeout", 30*time.Second, "how long to wait for the title")
	shot := flag.String("screenshot", "", "write a PNG screenshot of the page here")
	statusBackend := flag.String("status-backend", "", "check sluice's status page at -url: drain and ready this POOL/ADDRESS by its buttons")
	flag.Parse()
	if *pageURL == "" || (*dir == "" && *endpoint == "") {
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout+20*time.Second)
	defer cancel()
	if err := run(ctx, *dir, *endpoint, *pageURL, *want, *timeout, *shot, *statusBackend); err != nil {
		fmt.Fprintln(os.Stderr, "browser:", err)
		os.Exit(1)
	}
}

// status is what the page shows; see scripts/demo/web/game.js.
type status struct {
	Href    string `json:"href"`
	Ready   string `json:"ready"`
	HTTP    int    `json:"http"`  // the document's HTTP status
	Proto   string `json:"proto"` // the document's ALPN protocol: "h2", "http/1.1"
	IsDemo  bool   `json:"isDemo"`
	Title   string `json:"title"`
	State   string `json:"state"`
	Count   string `json:"count"`
	Backend string `json:"backend"`
	RTT     string `json:"rtt"`
	Result  string `json:"result"`
	Error   string `json:"error"`
}

const statusJS = `(() => {
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent : ""; };
  const nav = performance.getEntriesByType("navigation")[0];
  return JSON.stringify({href: location.href, ready: document.readyState, http: nav ? nav.responseStatus || 0 : 0,
    proto: nav ? nav.nextHopProtocol : "",
    isDemo: !!document.getElementById("state"), title: document.title, state: t("state"), count: t("count"),
    backend: t("backend"), rtt: t("rtt"), result: t("result"), error: t("error")});
})()`

func run(ctx context.Context, dir, endpoint, pageURL, want string, timeout time.Duration, shot, statusBackend string) error {
	if endpoint == "" {
		var err error
		if endpoint, err = activePort(ctx, dir); err != nil {
			return err
		}
	}
	target, err := newTarget(ctx, endpoint, pageURL)
	if err != nil {
		return err
	}
	defer closeTarget(endpoint, target.ID)

	c, err := dial(ctx, target.WebSocketDebuggerURL)
	if err != nil {
		return err
	}
	defer c.close()
	for _, m := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		if _, err := c.call(ctx, m, nil); err != nil {
			return err
		}
	}
	width, height := 860, 600
	if statusBackend != "" {
		width, height = 1280, 900 // the status page's tables
	}
	if _, err := c.call(ctx, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}); err != nil {
		return err
	}

	// Make the new tab the focused, visible one, as a player would have it.
	if _, err := c.call(ctx, "Page.bringToFront", nil); err != nil {
		return err
	}
	if statusBackend != "" {
		return checkStatusPage(ctx, c, pageURL, statusBackend, timeout, shot)
	}

	start := time.Now()
	deadline := start.Add(timeout)
	var st status
	var notDemo time.Time
	ok := false
	for {
		raw, err := c.call(ctx, "Runtime.evaluate", map[string]any{"expression": statusJS, "returnByValue": true})
		if err == nil {
			var r struct {
				Result struct {
					Value string `json:"value"`
				} `json:"result"`
			}
			if json.Unmarshal(raw, &r) == nil && r.Result.Value != "" {
				json.Unmarshal([]byte(r.Result.Value), &st)
			}
		}
		if st.Title == want {
			ok = true
			break
		}
		if strings.HasPrefix(st.Result, "failed") { // the page gave up
			break
		}
		if st.Href == pageURL && st.Ready == "complete" && !st.IsDemo {
			// Loaded, but not the demo page (an error answer): no need to wait.
			if notDemo.IsZero() {
				notDemo = time.Now()
			} else if time.Since(notDemo) > 2*time.Second {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	elapsed := time.Since(start)

	if shot != "" {
		if err := screenshot(ctx, c, shot); err != nil {
			fmt.Fprintln(os.Stderr, "browser: screenshot:", err)
		} else {
			fmt.Fprintf(os.Stderr, "browser: screenshot %s\n", shot)
		}
	}
	line := fmt.Sprintf("%s: title=%q proto=%s state=%s count=%s backend=%s rtt_ms=%s result=%q (%.1fs)",
		pageURL, st.Title, st.Proto, st.State, st.Count, st.Backend, st.RTT, st.Result, elapsed.Seconds())
	if ok {
		fmt.Println(line)
		return nil
	}
	fmt.Fprintln(os.Stderr, line)
	if st.Href != "" && st.Href != pageURL {
		fmt.Fprintf(os.Stderr, "  location: %s\n", st.Href)
	}
	if st.HTTP != 0 && st.HTTP != http.StatusOK {
		fmt.Fprintf(os.Stderr, "  the page answered HTTP %d %s\n", st.HTTP, http.StatusText(st.HTTP))
	}
	if st.Ready == "complete" && !st.IsDemo {
		body, _ := c.call(ctx, "Runtime.evaluate", map[string]any{
			"expression": "document.body ? document.body.innerText.slice(0, 300) : ''", "returnByValue": true})
		var r struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		json.Unmarshal(body, &r)
		fmt.Fprintf(os.Stderr, "  not the demo page; it shows: %q\n", strings.TrimSpace(r.Result.Value))
	}
	for _, m := range dedup(strings.Split(st.Error, "\n")) {
		fmt.Fprintf(os.Stderr, "  page error: %s\n", m)
	}
	for _, m := range dedup(c.messages()) {
		fmt.Fprintf(os.Stderr, "  console: %s\n", m)
	}
	if strings.HasPrefix(st.Result, "failed") {
		return fmt.Errorf("title %q not reached: the page gave up after %.1fs", want, elapsed.Seconds())
	}
	if st.Ready == "complete" && !st.IsDemo {
		return fmt.Errorf("title %q not reached: %s is not the demo page", want, pageURL)
	}
	return fmt.Errorf("title %q not reached within %s", want, timeout)
}

// dedup drops empty and repeated lines, keeping the first occurrence and
// counting the repeats.
func dedup(lines []string) []string {
	var out []string
	idx := map[string]int{}
	n := map[string]int{}
	for _, l := range lines {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		if _, seen := idx[l]; !seen {
			idx[l] = len(out)
			out = append(out, l)
		}
		n[l]++
	}
	for l, i := range idx {
		if n[l] > 1 {
			out[i] = fmt.Sprintf("%s (x%d)", l, n[l])
		}
	}
	return out
}

// activePort waits (bounded by ctx) for Chromium to write
// DIR/DevToolsActivePort, whose first line is the debugging port.
func activePort(ctx context.Context, dir string) (string, error) {
	f := filepath.Join(dir, "DevToolsActivePort")
	for {
		b, err := os.ReadFile(f)
		if err == nil {
			if port, _, found := strings.Cut(string(b), "\n"); found && port != "" {
				return "127.0.0.1:" + strings.TrimSpace(port), nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no %s: did Chromium start? (%v)", f, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type targetInfo struct {
	ID                   string `json:"id"`
	WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
}

func newTarget(ctx context.Context, endpoint, pageURL string) (targetInfo, error) {
	var t targetInfo
	// Chromium wants PUT for /json/new; the query is the URL itself.
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+endpoint+"/json/new?"+url.PathEscape(pageURL), nil)
	if err != nil {
		return t, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return t, fmt.Errorf("devtools %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return t, fmt.Errorf("devtools /json/new: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &t); err != nil || t.WebSocketDebuggerURL == "" {
		return t, fmt.Errorf("devtools /json/new: unexpected answer %q", body)
	}
	return t, nil
}

func closeTarget(endpoint, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+endpoint+"/json/close/"+id, nil)
	if err != nil {
		return
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

func screenshot(ctx context.Context, c *cdp, path string) error {
	raw, err := c.call(ctx, "Page.captureScreenshot", map[string]any{"format": "png"})
	if err != nil {
		return err
	}
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// cdp is a minimal DevTools protocol client: numbered calls, and the page's
// console messages and exceptions kept for the failure report.
type cdp struct {
	ws     *websocket.Conn
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	next    int64
	waiting map[int64]chan reply
	console []string
	readErr error
}

type reply struct {
	result json.RawMessage
	err    error
}

func dial(ctx context.Context, wsURL string) (*cdp, error) {
	ws, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		return nil, fmt.Errorf("devtools websocket: %w", err)
	}
	ws.SetReadLimit(64 << 20) // screenshots arrive as one base64 message
	rctx, cancel := context.WithCancel(context.Background())
	c := &cdp{ws: ws, cancel: cancel, done: make(chan struct{}), waiting: map[int64]chan reply{}}
	go c.readLoop(rctx)
	return c, nil
}

func (c *cdp) close() {
	c.ws.Close(websocket.StatusNormalClosure, "")
	c.cancel()
	<-c.done
}

func (c *cdp) call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.readErr != nil {
		err := c.readErr
		c.mu.Unlock()
		return nil, err
	}
	c.next++
	id := c.next
	c.waiting[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}()

	msg, err := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.ws.Write(cctx, websocket.MessageText, msg); err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("%s: %w", method, r.err)
		}
		return r.result, nil
	case <-cctx.Done():
		return nil, fmt.Errorf("%s: %w", method, cctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("%s: devtools connection closed", method)
	}
}

func (c *cdp) readLoop(ctx context.Context) {
	defer close(c.done)
	for {
		_, data, err := c.ws.Read(ctx)
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		var m struct {
			ID     int64           `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		if m.ID != 0 {
			r := reply{result: m.Result}
			if m.Error != nil {
				r.err = errors.New(m.Error.Message)
			}
			c.mu.Lock()
			ch := c.waiting[m.ID]
			c.mu.Unlock()
			if ch != nil {
				ch <- r
			}
			continue
		}
		if line := eventLine(m.Method, m.Params); line != "" {
			c.mu.Lock()
			if len(c.console) < 50 {
				c.console = append(c.console, line)
			}
			c.mu.Unlock()
		}
	}
}

func (c *cdp) messages() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.console...)
}

// eventLine renders the events worth showing when the page fails: console
// calls, uncaught exceptions and browser log entries (network and
// certificate errors land there).
func eventLine(method string, params json.RawMessage) string {
	switch method {
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		json.Unmarshal(params, &p)
		var parts []string
		for _, a := range p.Args {
			if a.Value != nil {
				parts = append(parts, fmt.Sprint(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		return p.Type + ": " + strings.Join(parts, " ")
	case "Runtime.exceptionThrown":
		var p struct {
			ExceptionDetails struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		json.Unmarshal(params, &p)
		return "exception: " + p.ExceptionDetails.Text + " " + p.ExceptionDetails.Exception.Description
	case "Log.entryAdded":
		var p struct {
			Entry struct {
				Level  string `json:"level"`
				Source string `json:"source"`
				Text   string `json:"text"`
				URL    string `json:"url"`
			} `json:"entry"`
		}
		json.Unmarshal(params, &p)
		return fmt.Sprintf("%s %s: %s %s", p.Entry.Source, p.Entry.Level, p.Entry.Text, p.Entry.URL)
	}
	return ""
}
