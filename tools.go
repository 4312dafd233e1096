//go:build tools

package main

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/coder/websocket"
	_ "github.com/pires/go-proxyproto"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "go.uber.org/goleak"
	_ "go.uber.org/zap"
	_ "golang.org/x/sys/unix"
)

func main() {}
