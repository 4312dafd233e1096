//go:build !linux

package l4

// platform is empty off Linux: every direction uses the buffer path and holds
// its buffer for life.
type platform struct{}

func (d *direction) setup() { d.path = PathBuffer }

func (d *direction) canWaitReadable() bool { return false }

func (d *direction) waitReadable() (stop bool) { return false }

func (d *direction) spliceLoop() { d.bufferLoop() }

func (d *direction) srcPending() bool { return false }
