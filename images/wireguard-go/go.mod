// wireguard-go for the wg-agent image, built by scripts/image-build.
// Its module is golang.zx2c4.com/wireguard (the wireguard-go repository);
// it has no semver tags, so the Go module proxy serves pseudo-versions.
module wgimage/wireguard-go

go 1.24

tool golang.zx2c4.com/wireguard

require (
	golang.org/x/crypto v0.37.0 // indirect
	golang.org/x/net v0.39.0 // indirect
	golang.org/x/sys v0.32.0 // indirect
	golang.zx2c4.com/wintun v0.0.0-20230126152724-0fa3db229ce2 // indirect
	golang.zx2c4.com/wireguard v0.0.0-20260522210424-ecfc5a8d5446 // indirect
)
