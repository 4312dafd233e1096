package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// statusRowJS reports the status page's backend rows of one pool and the
// target row: whether the page rendered, and what the target's state cell
// says. Selectors are the page's stable hooks (status.js).
const statusRowJS = `((pool, key) => {
  const rows = [...document.querySelectorAll("tr[data-backend]")].filter((r) => r.dataset.pool === pool);
  const row = rows.find((r) => r.dataset.backend === key);
  const cell = row ? row.querySelector("td.state") : null;
  const health = row ? row.querySelector("td.health") : null;
  const err = document.getElementById("error");
  return JSON.stringify({ready: document.readyState, title: document.title, rows: rows.length, found: !!row,
    state: cell ? cell.textContent : "", healthy: health ? health.dataset.healthy || "" : "",
    error: err && !err.hidden ? err.textContent : "", updated: (document.getElementById("updated") || {}).textContent || ""});
})`

type statusRow struct {
	Ready   string `json:"ready"`
	Title   string `json:"title"`
	Rows    int    `json:"rows"`
	Found   bool   `json:"found"`
	State   string `json:"state"`
	Healthy string `json:"healthy"`
	Error   string `json:"error"`
	Updated string `json:"updated"`
}

// buttonRectJS returns the center of the target row's button for an action.
const buttonRectJS = `((key, action) => {
  const row = [...document.querySelectorAll("tr[data-backend]")].find((r) => r.dataset.backend === key);
  const b = row && row.querySelector('button[data-action="' + action + '"]');
  if (!b || b.disabled) return "";
  b.scrollIntoView({block: "center"});
  const r = b.getBoundingClientRect();
  return JSON.stringify({x: r.left + r.width / 2, y: r.top + r.height / 2});
})`

// checkStatusPage drives sluice's status page: the backends of pool render,
// Drain on the target turns its state to "drain" (the API agrees), Ready
// turns it back.
func checkStatusPage(ctx context.Context, c *cdp, pageURL, target string, timeout time.Duration, shot string) error {
	pool, addr, ok := strings.Cut(target, "/")
	if !ok || pool == "" || addr == "" {
		return fmt.Errorf("-status-backend %q: want POOL/ADDRESS", target)
	}
	start := time.Now()
	deadline := start.Add(timeout)
	var last statusRow
	wait := func(what string, done func(statusRow) bool) error {
		for {
			if s, err := evalString(ctx, c, fmt.Sprintf("%s(%s, %s)", statusRowJS, jsString(pool), jsString(target))); err == nil && s != "" {
				last = statusRow{}
				json.Unmarshal([]byte(s), &last)
				if done(last) {
					return nil
				}
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("status page: %s not reached within %s (page: %+v)", what, timeout, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	fail := func(err error) error {
		if shot != "" {
			if serr := screenshot(ctx, c, shot); serr == nil {
				fmt.Fprintf(os.Stderr, "browser: screenshot %s\n", shot)
			}
		}
		for _, m := range dedup(c.messages()) {
			fmt.Fprintf(os.Stderr, "  console: %s\n", m)
		}
		return err
	}

	if err := wait("the backend rows of pool "+pool, func(r statusRow) bool { return r.Found && r.Rows > 0 && r.State != "" }); err != nil {
		return fail(err)
	}
	rows, before := last.Rows, last.State
	if before != "ready" {
		return fail(fmt.Errorf("status page: %s is %q before the test, want ready", target, before))
	}

	if err := click(ctx, c, target, "drain"); err != nil {
		return fail(err)
	}
	if err := wait(target+" state drain", func(r statusRow) bool { return r.State == "drain" }); err != nil {
		return fail(err)
	}
	api, err := apiState(ctx, pageURL, pool, addr)
	if err != nil {
		return fail(err)
	}
	if api != "drain" {
		return fail(fmt.Errorf("the page shows drain but /api/v1/state says %q", api))
	}
	if shot != "" {
		if err := screenshot(ctx, c, shot); err != nil {
			fmt.Fprintln(os.Stderr, "browser: screenshot:", err)
		} else {
			fmt.Fprintf(os.Stderr, "browser: screenshot %s\n", shot)
		}
	}

	if err := click(ctx, c, target, "ready"); err != nil {
		return fail(err)
	}
	if err := wait(target+" state ready", func(r statusRow) bool { return r.State == "ready" }); err != nil {
		return fail(err)
	}
	if api, err = apiState(ctx, pageURL, pool, addr); err != nil || api != "ready" {
		return fail(fmt.Errorf("after Ready /api/v1/state says %q (%v)", api, err))
	}
	fmt.Printf("%s: status=\"ok rows=%d %s drain=drain api=drain ready=ready\" (%.1fs)\n",
		pageURL, rows, target, time.Since(start).Seconds())
	return nil
}

// click presses and releases the left mouse button over the row's button,
// as a person would (the page's click handler sees a trusted event).
func click(ctx context.Context, c *cdp, key, action string) error {
	s, err := evalString(ctx, c, fmt.Sprintf("%s(%s, %s)", buttonRectJS, jsString(key), jsString(action)))
	if err != nil {
		return err
	}
	if s == "" {
		return fmt.Errorf("status page: no enabled %s button for %s", action, key)
	}
	var p struct{ X, Y float64 }
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return err
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		if _, err := c.call(ctx, "Input.dispatchMouseEvent", map[string]any{
			"type": typ, "x": p.X, "y": p.Y, "button": "left", "clickCount": 1}); err != nil {
			return err
		}
	}
	return nil
}

// apiState reads one backend's admin state from /api/v1/state next to the page.
func apiState(ctx context.Context, pageURL, pool, addr string) (string, error) {
	u, err := url.Parse(pageURL)
	if err != nil {
		return "", err
	}
	u = u.ResolveReference(&url.URL{Path: "api/v1/state"})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	var st struct {
		Pools []struct {
			Name     string `json:"name"`
			Backends []struct {
				Address string `json:"address"`
				State   string `json:"state"`
			} `json:"backends"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", fmt.Errorf("GET %s: %w", u, err)
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if p.Name == pool && b.Address == addr {
				return b.State, nil
			}
		}
	}
	return "", fmt.Errorf("GET %s: no backend %s/%s", u, pool, addr)
}

func evalString(ctx context.Context, c *cdp, expr string) (string, error) {
	raw, err := c.call(ctx, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	if err != nil {
		return "", err
	}
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return "", err
	}
	if r.ExceptionDetails != nil {
		return "", fmt.Errorf("page script: %s", r.ExceptionDetails.Text)
	}
	s, _ := r.Result.Value.(string)
	return s, nil
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
