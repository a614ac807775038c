# Sourced by tests/run.sh and tests/lab.sh: installs the Debian packages
# behind any command of `command:package` pairs that is missing.
install_missing() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# The same without the packages' recommendations: for the container
# runtimes (docker.io, podman), whose recommendations pull in needrestart
# (which hooks every later apt run) and apparmor (absent here).
install_missing_no_recommends() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing (no recommends): ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# busybox-static's /bin/busybox is the containers' image (a dynamic busybox
# would not run in an image without libraries).
install_busybox_static() {
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        echo "== installing busybox-static"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
    fi
}
