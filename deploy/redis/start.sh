#!/bin/sh
# Redis with ACL users from REDIS_PASSWORD: the default user is off (a client that has not authenticated gets
# NOAUTH for every command), and `app`, the one user of the relays, workers, API (rate limits) and Flower,
# may run every command but the administrative and dangerous ones (CONFIG, FLUSHALL, KEYS, SHUTDOWN, DEBUG,
# MONITOR, ACL, INFO, ...) on any key and channel. The file holds the password's SHA-256 only, so it need
# not be secret; it is written at every start, so a new REDIS_PASSWORD takes effect on a restart.
# Compose runs this as the container's command (as root, through the image's entrypoint); it ends in the
# image's own entrypoint, which drops to the redis user. Arguments are passed on to redis-server.
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD must be set}"
acl=/tmp/users.acl
hash=$(printf '%s' "$REDIS_PASSWORD" | sha256sum | cut -d ' ' -f 1)
umask 022  # readable by the redis user the entrypoint drops to
printf 'user default off\nuser app on #%s ~* &* +@all -@admin -@dangerous\n' "$hash" >"$acl"
exec docker-entrypoint.sh redis-server --aclfile "$acl" "$@"
