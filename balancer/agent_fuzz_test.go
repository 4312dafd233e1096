package balancer

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzAgentLine: for any bytes an agent sends, readAgentLine and
// ParseAgentLine do not panic and stay in bounds: a line is returned
// exactly when a CR or LF comes within the first MaxAgentLine+1 bytes (the
// same whether the bytes come at once or one by one), it has no line end
// and at most MaxAgentLine bytes; every error is an *AgentError with a
// reason; a parsed report has its numbers in range, a clean description,
// and its canonical form parses back to the same report.
func FuzzAgentLine(f *testing.F) {
	for _, s := range []string{
		"ready 80% maxconn:120\n",
		"up,ready,75%,maxconn:30,load:12\r\n",
		"drain\n",
		"maint # rolling restart\n",
		"down # out of memory\n",
		"stopped\r",
		"weight:7 weight:50%\n",
		"ready bogus\n",
		"ready",
		"\n",
		strings.Repeat("x", MaxAgentLine) + "\n",
		"SSH-2.0-OpenSSH_9.6\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		line, err := readAgentLine(bytes.NewReader(data))
		split, serr := readAgentLine(iotest.OneByteReader(bytes.NewReader(data)))
		if line != split || (err == nil) != (serr == nil) {
			t.Fatalf("whole %q, %v; one byte at a time %q, %v", line, err, split, serr)
		}
		end := bytes.IndexAny(data, "\r\n")
		if hasLine := end >= 0 && end <= MaxAgentLine; hasLine != (err == nil) {
			t.Fatalf("line end at %d: err %v", end, err)
		}
		if err != nil {
			var ae *AgentError
			if !errors.As(err, &ae) || ae.Reason == agentOK || ae.Reason >= numAgentReasons {
				t.Fatalf("read error %v is not an AgentError with a reason", err)
			}
			return
		}
		if len(line) > MaxAgentLine || strings.ContainsAny(line, "\r\n") || line != string(data[:end]) {
			t.Fatalf("line %q from %q", line, data)
		}
		r, err := ParseAgentLine(line)
		if err != nil {
			var ae *AgentError
			if !errors.As(err, &ae) || ae.Reason != AgentInvalid {
				t.Fatalf("parse error %v is not an AgentInvalid error", err)
			}
			return
		}
		if r.State > Maint || r.Health > AgentDown || r.Weight > 999999 || (r.WeightAbsolute && r.Weight > maxAgentAbsWeight) ||
			r.MaxConn > maxAgentNumber || r.Load > maxAgentNumber || len(r.Description) > maxAgentDescription {
			t.Fatalf("%q: out of range %+v", line, r)
		}
		for _, c := range []byte(r.Description) {
			if c < 0x20 || c > 0x7e {
				t.Fatalf("%q: description %q", line, r.Description)
			}
		}
		again, err := ParseAgentLine(r.String())
		if err != nil || again != r {
			t.Fatalf("%q: canonical %q parses to %+v, %v; want %+v", line, r.String(), again, err, r)
		}
	})
}
