//go:build !linux

package l4

// platform is empty off Linux: every direction uses the buffer path.
type platform struct{}

func (d *direction) setup() { d.path = PathBuffer }

func (d *direction) canWaitReadable() bool { return false }

func (d *direction) waitReadable() (stop bool) { return false }

func (d *direction) adaptive() bool { return false }

func (d *direction) adaptiveLoop() { d.bufferLoop() }

func (d *direction) srcPending() bool { return false }
