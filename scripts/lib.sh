# Shared helpers for the project's scripts (sourced, not run).

# ensure_packages WHAT:PACKAGE ... — apt-get install (no recommends) the
# packages whose WHAT is missing: a command name, or an absolute path.
# Runs `apt-get update` once, first.
ensure_packages() {
  local need=() pair what
  for pair in "$@"; do
    what=${pair%%:*}
    case "$what" in
      /*) [ -e "$what" ] || need+=("${pair#*:}") ;;
      *) command -v "$what" >/dev/null 2>&1 || need+=("${pair#*:}") ;;
    esac
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing: ${need[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "need root to install packages (and to create network namespaces)" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The packages the userspace tiers need.
ensure_userspace_packages() {
  ensure_packages wireguard-go:wireguard-go wg:wireguard-tools ip:iproute2 ping:iputils-ping
}

# ensure_go: a Go toolchain new enough for the project's Go modules (>= 1.22)
# first on PATH. Debian's golang-go (1.19, /usr/bin/go) is never installed:
# it cannot build libcni 1.3 or Kubernetes, and would shadow a newer Go.
# Looks in PATH, then /usr/local/go/bin; exports the PATH it chose.
ensure_go() {
  local dir v
  for dir in "" /usr/local/go/bin /root/go/bin; do
    if [ -n "$dir" ]; then [ -x "$dir/go" ] || continue; PATH=$dir:$PATH; fi
    command -v go >/dev/null 2>&1 || continue
    v=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    case "$v" in
      1.2[2-9]*|1.[3-9][0-9]*|[2-9].*) export PATH; return 0 ;;
    esac
  done
  echo "need Go >= 1.22 (found: $(command -v go || echo none) ${v:-}); Debian's golang-go is too old" >&2
  return 1
}

# What the end-to-end tests under a real CNI client need: Go (to build the
# project's small libcni client from its Go module), the reference plugins,
# and iptables (portmap).
ensure_cni_packages() {
  ensure_go
  ensure_packages iptables:iptables /usr/lib/cni/bridge:containernetworking-plugins
}

# podman 4.3 with its CNI backend, for the podman end-to-end test.
ensure_podman_packages() {
  ensure_packages podman:podman runc:runc conmon:conmon /bin/busybox:busybox-static
}

# Where tools built once from crates.io are kept (youki, netavark, ...):
# $WG_NETNS_TOOLS_CACHE ($WG_OCI_TOOLS, its former name for youki, is still
# read), default /var/cache/wg-netns-tools. The integration tests look there.
tools_cache() {
  echo "${WG_NETNS_TOOLS_CACHE:-${WG_OCI_TOOLS:-/var/cache/wg-netns-tools}}"
}

# What wg-oci's runtime tests (wg-oci/tests/runtimes.rs) run: runc, crun,
# podman 4.3 with conmon, busybox-static for the rootfs, wireguard-go for
# the peer and the hook's devices. youki comes from ensure_youki.
ensure_runtime_packages() {
  ensure_userspace_packages
  ensure_packages nsenter:util-linux runc:runc crun:crun podman:podman conmon:conmon \
    /bin/busybox:busybox-static tar:tar
}

# youki 0.7.0, built once (cargo install --locked, ~4 min, 20+ under load)
# into $(tools_cache)/youki-0.7.0; prints its path.
ensure_youki() {
  local tools youki
  tools=$(tools_cache)
  youki=$tools/youki-0.7.0/bin/youki
  if [ ! -x "$youki" ]; then
    ensure_packages pkg-config:pkg-config /usr/include/seccomp.h:libseccomp-dev || return 1
    echo "building youki 0.7.0 once (cargo install, ~4 min) into $tools/youki-0.7.0" >&2
    mkdir -p "$tools"
    rm -rf "$tools/youki-0.7.0.partial"
    nice -n 10 cargo install -q --root "$tools/youki-0.7.0.partial" --target-dir "$tools/youki-build" \
      youki@0.7.0 --locked --features v1,v2,seccomp >&2 || { echo "youki did not build" >&2; return 1; }
    rm -rf "$tools/youki-0.7.0"
    mv "$tools/youki-0.7.0.partial" "$tools/youki-0.7.0"
  fi
  echo "$youki"
}

# netavark $NETAVARK_VERSION (default 2.1.0), built once (cargo install
# --locked, ~5-6 min) into $(tools_cache)/netavark-VERSION; prints its path.
ensure_netavark() {
  local version=${NETAVARK_VERSION:-2.1.0} cache t0
  cache=$(tools_cache)/netavark-$version
  if [ ! -x "$cache/bin/netavark" ]; then
    ensure_packages protoc:protobuf-compiler || return 1
    echo "building netavark $version (once, ~5-6 min) into $cache" >&2
    t0=$(date +%s)
    rm -rf "$cache.partial"
    nice -n 10 cargo install netavark --locked --version "$version" \
      --root "$cache.partial" --target-dir "$cache.build" >&2 || { echo "netavark build failed" >&2; return 1; }
    rm -rf "$cache" && mv "$cache.partial" "$cache" && rm -rf "$cache.build"
    echo "netavark built in $(( $(date +%s) - t0 )) s" >&2
  fi
  echo "$cache/bin/netavark"
}
