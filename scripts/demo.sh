#!/usr/bin/env bash
# The seed's walk-through, played between host A and host B as two network namespaces, each with its
# own ipsecd. The commands are the seed's, with documentation addresses instead of 1.2.3.4 and 5.6.7.8
# and one addition the README recommends: a digest key. (The seed's line without it works too, with a
# warning that the SA has no integrity protection.)
set -euo pipefail

A_PUB=192.0.2.1 B_PUB=192.0.2.2
A_PRIV=10.0.1.1 B_PRIV=10.0.2.1
tag="demo$$"
NS_A="${tag}A" NS_B="${tag}B"
WORK=$(mktemp -d /tmp/ipsec-tunnel-demo.XXXXXX)

for tool in ipsecd ipsecadm ip ifconfig route ping; do
    command -v "$tool" >/dev/null || { echo "demo: $tool not found (run 'make demo')" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "demo: must run as root (network namespaces)" >&2; exit 1; }

cleanup() {
    set +e
    for h in A B; do
        [ -f "$WORK/$h/ipsecd.pid" ] && kill "$(cat "$WORK/$h/ipsecd.pid")" 2>/dev/null
    done
    sleep 0.5
    ip netns del "$NS_A" 2>/dev/null
    ip netns del "$NS_B" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# on HOST CMD...: run CMD on host A or B, showing it as typed there.
on() {
    local host=$1; shift
    local ns; [ "$host" = A ] && ns=$NS_A || ns=$NS_B
    printf '%s# %s\n' "$host" "$*"
    ip netns exec "$ns" env IPSEC_TUNNEL_SOCKET="$WORK/$host/ipsecd.sock" "$@"
}

say "Two hosts: A ($A_PUB, private $A_PRIV) and B ($B_PUB, private $B_PRIV), as network namespaces"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "${tag}a" netns "$NS_A" type veth peer name "${tag}b" netns "$NS_B"
ip -n "$NS_A" addr add "$A_PUB/24" dev "${tag}a"
ip -n "$NS_B" addr add "$B_PUB/24" dev "${tag}b"
for ns in "$NS_A" "$NS_B"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_A" link set "${tag}a" up
ip -n "$NS_B" link set "${tag}b" up

say "Start ipsecd on both hosts (this is what 'modprobe ipsec' was): ipsec0 appears, inactive"
for h in A B; do
    mkdir -p "$WORK/$h"
    on "$h" ipsecd --socket "$WORK/$h/ipsecd.sock" --state-dir "$WORK/$h/state" --pidfile "$WORK/$h/ipsecd.pid"
done
for _ in $(seq 50); do
    [ -S "$WORK/A/ipsecd.sock" ] && [ -S "$WORK/B/ipsecd.sock" ] && break
    sleep 0.1
done
on A ifconfig -a ipsec0

say "Make a key on host A, and copy it to host B (the seed: 'in a secure manner, e.g. using ssh/scp')"
KEYDIR="$WORK/etc/ipsec"
mkdir -p "$KEYDIR"
chmod 500 "$KEYDIR"
on A dd if=/dev/random of="$KEYDIR/example.key" bs=24 count=1 status=none
on A dd if=/dev/random of="$KEYDIR/example-auth.key" bs=20 count=1 status=none
chmod 400 "$KEYDIR"/*.key

say "Create the SA pair on both hosts"
for h in A B; do
    on "$h" ipsecadm sa add --spi=0x1000 --dst="$B_PUB" --src="$A_PUB" \
        --cipher=des_ede3-cbc \
        --cipher-keyfile="$KEYDIR/example.key" \
        --digest=sha1 --digest-keyfile="$KEYDIR/example-auth.key" \
        --duplex
done
on A ipsecadm sa show

say "Create the tunnels, give them addresses, route the other private network through them"
on A ipsecadm tunnel add ipsec1 --local="$A_PUB" --remote="$B_PUB"
on A ifconfig ipsec1 "$A_PRIV" up
on A route add -net 10.0.2.0/24 dev ipsec1
on B ipsecadm tunnel add ipsec1 --local="$B_PUB" --remote="$A_PUB"
on B ifconfig ipsec1 "$B_PRIV" up
on B route add -net 10.0.1.0/24 dev ipsec1

say "Ping host B's private address from host A, through the tunnel"
on A ping -c 4 -i 0.2 -I "$A_PRIV" "$B_PRIV"

say "What the tunnel did"
on A ipsecadm sa show -s
on A ipsecadm tunnel show -s
on A ipsecadm stats
on A ifconfig ipsec1

say "Done: cleaning up"
