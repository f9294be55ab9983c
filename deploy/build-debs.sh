#!/bin/sh
# Builds the Debian packages (README, "Packages"), into target/debian/:
#   geppetto-puppet_VERSION_ARCH.deb      the puppet, /etc/geppetto/puppet.toml
#                                        (a conffile) and its systemd unit
#   geppetto-puppeteer_VERSION_ARCH.deb   the puppeteer, the geppetto CLI, the
#                                        puppet binary it serves to machines it
#                                        installs, /etc/geppetto/puppeteer.toml
#                                        (a conffile), its unit, and the system
#                                        user `geppetto` it runs as
# The units are deploy/*.service with the binaries in /usr/bin and, for the
# puppeteer, the user `geppetto` instead of a dynamic one. Needs cargo-deb
# (installed with `cargo install cargo-deb` if missing). Usage:
#   deploy/build-debs.sh
set -eu
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
target="${CARGO_TARGET_DIR:-target}"
units="target/debian-units"
rm -rf "$units"
mkdir -p "$units/puppet" "$units/puppeteer"
sed 's#/usr/local/bin/#/usr/bin/#g' deploy/puppet.service > "$units/puppet/puppet.service"
sed -e 's#/usr/local/bin/#/usr/bin/#g' \
    -e 's#^DynamicUser=yes#User=geppetto\nGroup=geppetto#' \
    deploy/puppeteer.service > "$units/puppeteer/puppeteer.service"
cat > "$units/puppeteer/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    adduser --system --group --home /var/lib/geppetto --no-create-home geppetto >/dev/null
    chown root:geppetto /etc/geppetto/puppeteer.toml
    chmod 0640 /etc/geppetto/puppeteer.toml
fi
#DEBHELPER#
SCRIPT
chmod 0755 "$units/puppeteer/postinst"
cargo build --release --locked -p puppet -p puppeteer -p geppetto-cli
cargo deb --no-build -p puppet -o "$target/debian/"
cargo deb --no-build -p puppeteer -o "$target/debian/"
ls -l "$target"/debian/*.deb
