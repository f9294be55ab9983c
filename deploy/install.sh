#!/bin/sh
# Installs a Geppetto puppet on this machine, from its puppeteer. Served by
# the puppeteer at /install.sh; run by the command that
# `geppetto enroll-tokens create --install-command` prints, which fetches
# this script with the puppeteer's CA pinned (never `curl -k`):
#
#   sh install.sh --server https://PUPPETEER:7443 [--ca-file CA.pem] \
#       [--name NAME] [--labels K=V,...] [--token-file FILE]
#
# It fetches the puppet binary for this machine's platform, checks its
# SHA-256, and installs:
#   /usr/local/bin/puppet               the binary
#   /etc/geppetto/puppet.toml           its config (kept if already there)
#   /etc/geppetto/ca.pem                the puppeteer's CA
#   /var/lib/geppetto-puppet/           its state (mode 0700)
#   /etc/systemd/system/puppet.service  deploy/puppet.service, enabled, started
# then enrolls with the enrollment token, read from --token-file or asked on
# the terminal (never on a command line, never kept: the file written for
# the enrollment is removed once enrolled). Running it again changes nothing
# that is already right. Without systemd it prints the command that starts
# the puppet. HTTPS_PROXY is honoured, and written into the config.
#
# Environment, for tests and unusual machines: GEPPETTO_INSTALL_ROOT=DIR
# installs under DIR (no root needed, no systemd), GEPPETTO_INSTALL_OS and
# GEPPETTO_INSTALL_ARCH override the platform.
set -eu

server="" ca_file="" name="" labels="" token_file=""
while [ $# -gt 0 ]; do
    case "$1" in
        --server) server="$2"; shift 2 ;;
        --ca-file) ca_file="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --labels) labels="$2"; shift 2 ;;
        --token-file) token_file="$2"; shift 2 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
fail() { echo "install.sh: $*" >&2; exit 1; }
[ -n "$server" ] || fail "--server URL is required"
if [ -n "$ca_file" ]; then
    [ -s "$ca_file" ] || fail "the CA file $ca_file is missing or empty"
    cacert="--cacert $ca_file"
else
    cacert=""   # a puppeteer with a certificate of a public CA
fi
command -v curl >/dev/null || fail "curl is required"
command -v sha256sum >/dev/null || fail "sha256sum is required"

root="${GEPPETTO_INSTALL_ROOT:-}"
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    fail "run it as root (sudo), or set GEPPETTO_INSTALL_ROOT"
fi
os="${GEPPETTO_INSTALL_OS:-$(uname -s | tr '[:upper:]' '[:lower:]')}"
arch="${GEPPETTO_INSTALL_ARCH:-$(uname -m)}"
case "$arch" in
    amd64) arch=x86_64 ;;
    arm64) arch=aarch64 ;;
esac
[ -n "$name" ] || name="$(hostname | tr '[:upper:]' '[:lower:]' | cut -d. -f1)"

bin="$root/usr/local/bin/puppet"
etc="$root/etc/geppetto"
state="$root/var/lib/geppetto-puppet"
unit="/etc/systemd/system/puppet.service"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM
umask 077
changed=0
say() { echo "puppet install: $*"; }

get() { # URL OUTPUT [HEADER_FILE]: the HTTP status, the body in OUTPUT
    if [ $# -gt 2 ]; then
        curl -sS $cacert -H @"$3" -o "$2" -w '%{http_code}' "$1"
    else
        curl -sS $cacert -o "$2" -w '%{http_code}' "$1"
    fi
}

# What the puppeteer serves for this platform.
status=$(get "$server/install/puppet/$os/$arch.sha256" "$work/sha") ||
    fail "cannot reach $server with the CA given (see the error above)"
case "$status" in
    200) ;;
    404) fail "no puppet for this machine ($os/$arch): $(cat "$work/sha")" ;;
    *) fail "the puppeteer answered $status: $(cat "$work/sha")" ;;
esac
read -r want_sha want_size want_version < "$work/sha"

enrolled=0
[ -s "$state/credential" ] && enrolled=1
have_sha=""
[ -f "$bin" ] && have_sha=$(sha256sum "$bin" | cut -d' ' -f1)

# The enrollment token, when something needs it.
token=""
if [ "$enrolled" = 0 ] || [ "$have_sha" != "$want_sha" ]; then
    if [ -n "$token_file" ]; then
        token=$(tr -d ' \r\n' < "$token_file")
    elif [ -r /dev/tty ]; then
        printf 'Enrollment token (geppetto enroll-tokens create): ' > /dev/tty
        stty -echo < /dev/tty 2>/dev/null || true
        read -r token < /dev/tty || true
        stty echo < /dev/tty 2>/dev/null || true
        printf '\n' > /dev/tty
    fi
    [ -n "$token" ] || fail "an enrollment token is needed: --token-file FILE, or run it on a terminal"
    printf 'Authorization: Bearer %s\n' "$token" > "$work/auth"
fi

# The binary, checked before it replaces anything.
if [ "$have_sha" = "$want_sha" ]; then
    say "binary $bin unchanged (version $want_version)"
else
    status=$(get "$server/install/puppet/$os/$arch" "$work/puppet" "$work/auth") ||
        fail "the download failed (see the error above)"
    [ "$status" = 200 ] || fail "the puppeteer refused the download ($status): $(head -c 300 "$work/puppet")"
    got=$(sha256sum "$work/puppet" | cut -d' ' -f1)
    [ "$got" = "$want_sha" ] ||
        fail "the binary downloaded does not match its SHA-256 ($got, expected $want_sha): nothing installed"
    mkdir -p "$(dirname "$bin")"
    chmod 0755 "$work/puppet"
    cp "$work/puppet" "$bin.new" && mv -f "$bin.new" "$bin"
    say "binary $bin installed (version $want_version, sha256 $want_sha)"
    changed=1
fi

mkdir -p "$etc"
chmod 0755 "$etc"
if [ -z "$ca_file" ]; then
    :
elif cmp -s "$ca_file" "$etc/ca.pem"; then
    say "CA $etc/ca.pem unchanged"
else
    cp "$ca_file" "$etc/ca.pem.new" && chmod 0644 "$etc/ca.pem.new" && mv -f "$etc/ca.pem.new" "$etc/ca.pem"
    say "CA $etc/ca.pem installed"
    changed=1
fi

mkdir -p "$state"
chmod 0700 "$state"

if [ -f "$etc/puppet.toml" ]; then
    say "config $etc/puppet.toml kept as it is"
else
    {
        echo "# Written by install.sh from $server. See deploy/puppet.toml for every key."
        echo "server = \"$server\""
        [ -n "$ca_file" ] && echo "ca = \"$etc/ca.pem\""
        echo "state_dir = \"$state\""
        echo "name = \"$name\""
        proxy="${HTTPS_PROXY:-${https_proxy:-}}"
        [ -n "$proxy" ] && echo "proxy = \"$proxy\""
        if [ -n "$labels" ]; then
            echo "[labels]"
            echo "$labels" | tr ',' '\n' | while IFS='=' read -r k v; do
                [ -n "$k" ] && echo "$k = \"$v\""
            done
        fi
    } > "$etc/puppet.toml.new"
    chmod 0644 "$etc/puppet.toml.new"
    mv -f "$etc/puppet.toml.new" "$etc/puppet.toml"
    say "config $etc/puppet.toml written"
    changed=1
fi

# Enrollment, once: the token goes through a file that is removed after.
if [ "$enrolled" = 1 ]; then
    say "already enrolled ($state/credential)"
else
    printf '%s\n' "$token" > "$work/token"
    "$bin" run --config "$etc/puppet.toml" --enroll-token-file "$work/token" --enroll-only ||
        fail "the enrollment failed (see above); run this again once that is fixed"
    rm -f "$work/token"
    say "enrolled as $name"
    changed=1
fi

start="$bin run --config $etc/puppet.toml"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    status=$(get "$server/install/puppet.service" "$work/unit") || fail "cannot fetch the unit"
    [ "$status" = 200 ] || fail "the puppeteer answered $status for the unit"
    if cmp -s "$work/unit" "$unit"; then
        say "unit $unit unchanged"
    else
        cp "$work/unit" "$unit" && chmod 0644 "$unit"
        systemctl daemon-reload
        say "unit $unit installed"
        changed=1
    fi
    systemctl enable --quiet puppet.service
    if [ "$changed" = 1 ]; then
        systemctl restart puppet.service
    else
        systemctl start puppet.service
    fi
    say "running: systemctl status puppet"
else
    say "no systemd here: start it with"
    echo "  $start"
fi
if [ "$changed" = 0 ]; then
    say "nothing changed"
fi
