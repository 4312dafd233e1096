package main

// growStack makes the calling goroutine's stack at least 8 KiB while the
// stack is still shallow. A session goroutine starts with the runtime's
// starting size (2 KiB unless the GC measured bigger goroutines), and its
// l4 path (ClientHello peek, the dial through net.Dialer, the relay's
// start) needs between 4 and 8 KiB: grown on demand, that is two stack
// copies, the second deep in net.Dialer, each walking every frame to adjust
// its pointers (2.5 % of sluice's CPU in the L4 connection scenario). One
// copy here, at the top of the goroutine, costs about half of that. The
// stack goes with the goroutine when it hands the connection on (issue 11).
//
//go:noinline
func growStack() {
	var pad [growFrame]byte
	touchStack(pad[:]) // keeps the frame: the compiler cannot drop an array it passes on
}

//go:noinline
func touchStack(b []byte) byte { return b[len(b)-1] }

// growFrame: the frame that, with the little already used and the
// runtime's stack guard, fits 8 KiB but not 4.
const growFrame = 5 << 10
