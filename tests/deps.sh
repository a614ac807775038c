# Sourced by tests/run.sh and tests/lab.sh: installs the Debian packages
# behind any command of `command:package` pairs that is missing.
install_missing() {
    install_with "" "$@"
}

# The same without the packages' recommendations: for the container
# runtimes (docker.io, podman), whose recommendations pull in needrestart
# (which hooks every later apt run) and apparmor (absent here).
install_missing_no_recommends() {
    install_with --no-install-recommends "$@"
}

# install_with APT_OPTION PAIR...: the packages behind the missing commands.
install_with() {
    local opt=$1 need=() pair
    shift
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing: ${need[*]}"
        apt-get update -qq
        # shellcheck disable=SC2086 # an empty option is no argument
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $opt "${need[@]}" >/dev/null
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
