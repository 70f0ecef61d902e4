#!/bin/sh
# As the official rabbitmq image: RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS make that user (tagged
# administrator, every permission on RABBITMQ_DEFAULT_VHOST, which is made too; default `/`) at the first
# start on an empty data directory, and then there is no `guest`. RabbitMQ reads these settings only
# when its database is empty: a later start with other values changes nothing (use rabbitmqctl).
# Root fixes the data directory's owner and drops to the rabbitmq user; flags alone mean rabbitmq-server.
set -eu

case "${1:-}" in
    -*) set -- rabbitmq-server "$@" ;;
esac

if [ "${1:-}" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
    conf=/etc/rabbitmq/rabbitmq.conf
    umask 027  # the password is in it: root and the rabbitmq group only
    {
        echo 'listeners.tcp.default = 5672'
        echo 'management.tcp.port = 15672'
        if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
            : "${RABBITMQ_DEFAULT_PASS:?RABBITMQ_DEFAULT_PASS must be set with RABBITMQ_DEFAULT_USER}"
            echo "default_user = $RABBITMQ_DEFAULT_USER"
            echo "default_pass = $RABBITMQ_DEFAULT_PASS"
        fi
        if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
            echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
        fi
    } >"$conf"
    chgrp rabbitmq "$conf"
    find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    shift
    # Not the /usr/sbin wrapper: it would send the server's output to /var/log/rabbitmq/startup_log.
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi

exec "$@"
