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
