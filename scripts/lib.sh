# Shared helpers for the project's scripts (sourced, not run).

# ensure_packages CMD:PACKAGE ... — apt-get install (no recommends) the
# packages whose command is missing. Runs `apt-get update` once, first.
ensure_packages() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
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
