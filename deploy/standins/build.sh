#!/bin/sh
# Builds the local stand-in images the compose test (tests/compose) runs on an engine with no registry:
#   order-outbox/debian-base:local     debootstrap --variant=minbase bookworm, trimmed, `docker import`ed
#   order-outbox/python-standin:local  Debian's python3.11 (for the Dockerfile's PYTHON_IMAGE)
#   order-outbox/postgres-standin:local, order-outbox/redis-standin:local  Debian's PostgreSQL 15 and Redis 7
#   order-outbox/rabbitmq-standin:local  Debian's RabbitMQ 3.10 with the management plugin (the RabbitMQ shape)
# None of them carries an official image's name. Cached in ORDER_OUTBOX_CACHE (default ~/.cache/order-outbox):
# the debootstrap tarball, and the built stand-ins as one `docker save` archive keyed by their sources, so a
# fresh engine loads them in seconds. Images already on the engine are kept; FORCE=1 rebuilds everything.
# Needs root (debootstrap) and a reachable Debian mirror; DOCKER_HOST picks the engine.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${ORDER_OUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/order-outbox}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
tag=${STANDIN_TAG:-local}
docker=${DOCKER:-docker}
# Bump when the trimming below changes, so a cached tarball of the old shape is not reused.
tarball=$cache/debian-bookworm-minbase-v1.tar

log() { printf '[standins] %s\n' "$*" >&2; }
seconds() { date +%s; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

print_images() {  # what to export so compose and the Dockerfile use them (the defaults are the official images)
    printf 'PYTHON_IMAGE=order-outbox/python-standin:%s\n' "$tag"
    printf 'POSTGRES_IMAGE=order-outbox/postgres-standin:%s\n' "$tag"
    printf 'REDIS_IMAGE=order-outbox/redis-standin:%s\n' "$tag"
    printf 'RABBITMQ_IMAGE=order-outbox/rabbitmq-standin:%s\n' "$tag"
}

have_image() { [ -z "${FORCE:-}" ] && "$docker" image inspect "$1" >/dev/null 2>&1; }

trim_rootfs() {  # what debian:bookworm-slim does: no docs, no services started by packages, no apt lists
    root=$1
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
    cat >"$root/etc/apt/apt.conf.d/docker-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CFG
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/var/log/apt/*
    : >"$root/etc/machine-id"
}

standins="order-outbox/python-standin:$tag order-outbox/postgres-standin:$tag order-outbox/redis-standin:$tag
order-outbox/rabbitmq-standin:$tag"
# The archive's key: the stand-ins' sources, the base's shape and the CA bundle baked into the Python one.
key=$( (cd "$here" && basename "$tarball" && find python postgres redis rabbitmq -type f | sort | while read -r f; do
    printf '%s\n' "$f" && cat "$f"; done && cat "$ca_bundle") | sha256sum | cut -c1-16)
archive=$cache/standins-$tag-$key.tar

missing=""
for image in $standins; do have_image "$image" || missing="$missing $image"; done
if [ -n "$missing" ] && [ -z "${FORCE:-}" ] && [ -s "$archive" ]; then
    start=$(seconds)
    "$docker" load -q -i "$archive" >/dev/null
    log "loaded the stand-ins from $archive in $(( $(seconds) - start )) s"
    missing=""
    for image in $standins; do have_image "$image" || missing="$missing $image"; done
fi
if [ -z "$missing" ]; then
    print_images
    exit 0
fi

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 2; }
    start=$(seconds)
    log "debootstrap --variant=minbase bookworm from $mirror (not cached yet: $tarball)"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    trim_rootfs "$work/rootfs"
    mkdir -p "$cache"
    tar -C "$work/rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$tarball.$$" .
    mv "$tarball.$$" "$tarball"  # atomic: a concurrent or interrupted run never sees half a tarball
    rm -rf "$work/rootfs"
    log "debootstrap: $(( $(seconds) - start )) s, $(du -h "$tarball" | cut -f1)"
fi

base=order-outbox/debian-base:$tag
if ! have_image "$base"; then
    "$docker" import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$base" >/dev/null
    log "imported $base"
fi

build() {  # build <name> <context dir>: the stand-in's folder plus the host's CA bundle, from the base
    image=order-outbox/$1:$tag
    if have_image "$image"; then log "$image present"; return 0; fi
    start=$(seconds)
    mkdir -p "$work/$1" && cp -R "$2/." "$work/$1"
    # HTTPS from a build goes through the host's trust store (pip in the Python stand-in).
    cp "$ca_bundle" "$work/$1/ca-certificates.crt"
    DOCKER_BUILDKIT=0 "$docker" build --build-arg "BASE_IMAGE=$base" -t "$image" "$work/$1" >"$work/$1.log" 2>&1 \
        || { tail -n 30 "$work/$1.log" >&2; log "building $image failed"; return 1; }
    log "built $image in $(( $(seconds) - start )) s"
}

# The builds only share the base: side by side (mostly waiting on the mirror and dpkg).
build python-standin "$here/python" & python_build=$!
build postgres-standin "$here/postgres" & postgres_build=$!
build redis-standin "$here/redis" & redis_build=$!
build rabbitmq-standin "$here/rabbitmq" & rabbitmq_build=$!
failed=0
for pid in "$python_build" "$postgres_build" "$redis_build" "$rabbitmq_build"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { log "a stand-in build failed (see above)"; exit 1; }

mkdir -p "$cache"
# shellcheck disable=SC2086  # a word list of image names
"$docker" save -o "$archive.$$" $standins && mv "$archive.$$" "$archive"
find "$cache" -maxdepth 1 -name "standins-$tag-*.tar" ! -name "$(basename "$archive")" -delete  # older keys
log "saved the stand-ins to $archive ($(du -h "$archive" | cut -f1))"

print_images
