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

# What the end-to-end tests under a real CNI client need: Go and libcni's
# sources (to build the project's small libcni client), the reference
# plugins, and iptables (portmap).
ensure_cni_packages() {
  ensure_packages go:golang-go iptables:iptables \
    /usr/share/gocode/src/github.com/containernetworking/cni/libcni:golang-github-appc-cni-dev \
    /usr/lib/cni/bridge:containernetworking-plugins
}

# podman 4.3 with its CNI backend, for the podman end-to-end test.
ensure_podman_packages() {
  ensure_packages podman:podman runc:runc conmon:conmon /bin/busybox:busybox-static
}
