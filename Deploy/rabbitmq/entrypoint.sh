#!/bin/sh
# Renders Baton's broker definitions and settings with the passwords from the environment (each
# ${BATON_…_PASSWORD} placeholder; a missing one stops the start), then hands over to the image's own
# entrypoint. The rendered files are readable by the broker's user only.
set -eu
render() {
    perl -pe 's/\$\{(BATON_[A-Z_]+)\}/defined $ENV{$1} && length $ENV{$1} ? escape($ENV{$1}) : die "entrypoint.sh: $1 is not set\n"/ge;
        sub escape { my $v = shift; $v =~ s/(["\\])/\\$1/g; $v }' "$1" > "$2.tmp"
    chmod 600 "$2.tmp"
    mv "$2.tmp" "$2"
}
render /etc/rabbitmq/baton/definitions.json /var/lib/rabbitmq/baton-definitions.json
render /etc/rabbitmq/baton/rabbitmq.conf /etc/rabbitmq/conf.d/90-baton.conf
# A node of a cluster (BATON_CLUSTER_NODES: the node names, space-separated): it finds the others at its
# first boot and joins them; nodes share RABBITMQ_ERLANG_COOKIE, which the image's entrypoint writes over the
# cookie file (read-only as the image made it).
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ] && [ -f "$HOME/.erlang.cookie" ]; then
    chmod 600 "$HOME/.erlang.cookie"
fi
if [ -n "${BATON_CLUSTER_NODES:-}" ]; then
    {
        echo "cluster_formation.peer_discovery_backend = classic_config"
        index=1
        for node in $BATON_CLUSTER_NODES; do
            echo "cluster_formation.classic_config.nodes.$index = $node"
            index=$((index + 1))
        done
    } > /etc/rabbitmq/conf.d/91-cluster.conf
fi
entrypoint=/usr/local/bin/docker-entrypoint.sh
if [ -x "$entrypoint" ]; then exec "$entrypoint" "$@"; else exec /bin/sh "$entrypoint" "$@"; fi
