#!/bin/sh
# Cluster mode on one machine (README, "Cluster mode on etcd"): three "hosts" (network namespaces
# on a bridged veth underlay, 172.31.0.0/24), etcd in the underlay's namespace, one `usernet up`
# with a [cluster] section per host, a guest per host taking a DHCP address and registering a
# name; then pings and names across the hosts and `ctl cluster`. Everything it made is removed
# on exit (daemons and etcd stopped by pid, namespaces deleted), also on failure or Ctrl-C.
#
# As root, with Debian's etcd-server, busybox and iproute2:
#   cargo build --release --features cluster
#   scripts/cluster-demo.sh [path/to/usernet]        (default target/release/usernet)
# KEEP=1 leaves it running until Enter is pressed (try the commands it prints meanwhile).
set -eu
U=$(realpath "${1:-target/release/usernet}")
P=ucd                        # prefix of the namespaces and links
T=$(mktemp -d)
PIDS=""

cleanup() {
  set +e
  for p in $PIDS; do kill "$p" 2>/dev/null; done
  for p in $PIDS; do wait "$p" 2>/dev/null; done
  for i in 1 2 3; do
    ip netns del $P-g$i 2>/dev/null; ip netns del $P-h$i 2>/dev/null; rm -rf /etc/netns/$P-g$i
  done
  ip netns del $P-ul 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# 1. The underlay: a bridge in namespace $P-ul; etcd on it at 172.31.0.254.
ip netns add $P-ul
ip -n $P-ul link add br0 type bridge
ip -n $P-ul link set br0 up
ip -n $P-ul link set lo up
ip -n $P-ul addr add 172.31.0.254/24 dev br0
E=http://172.31.0.254:2379
ip netns exec $P-ul etcd --name n0 --data-dir "$T/etcd" \
  --listen-client-urls $E --advertise-client-urls $E \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster n0=http://127.0.0.1:2380 2>"$T/etcd.log" &
PIDS="$PIDS $!"
n=0; until ip netns exec $P-ul curl -s -m 1 $E/health | grep -q true; do
  n=$((n+1)); [ $n -lt 100 ] || { echo "etcd did not start"; cat "$T/etcd.log"; exit 1; }; sleep 0.1
done

# 2. Three hosts $P-h1..3 (172.31.0.1..3 on the underlay), each with a guest namespace
#    $P-g1..3 and its usernet: node h$i, cluster network "web" (VNI 70, 10.70.0.0/24).
for i in 1 2 3; do
  ip netns add $P-h$i; ip netns add $P-g$i
  ip link add $P-v$i type veth peer name ul0 netns $P-h$i
  ip link set $P-v$i netns $P-ul
  ip -n $P-ul link set $P-v$i master br0 up
  ip -n $P-h$i addr add 172.31.0.$i/24 dev ul0
  ip -n $P-h$i link set ul0 up; ip -n $P-h$i link set lo up
  cat > "$T/h$i.toml" <<EOT
[cluster]
etcd = ["$E"]
node = "h$i"
vtep = "172.31.0.$i"

[[network]]
name = "web"
scope = "cluster"
vni = 70
subnet = "10.70.0.0/24"
dns_upstreams = ["127.0.0.1:9"]   # the hosts here have no way out: no upstream to ask

[[port]]
network = "web"
name = "g$i"
netns = "/run/netns/$P-g$i"
EOT
  ip netns exec $P-h$i "$U" up -c "$T/h$i.toml" --socket "$T/h$i.sock" 2>"$T/h$i.log" &
  PIDS="$PIDS $!"
done
n=0; until [ -S "$T/h1.sock" ] && "$U" ctl --socket "$T/h1.sock" cluster 2>/dev/null | grep -q '^h3 '; do
  n=$((n+1)); [ $n -lt 100 ] || { echo "the nodes did not meet"; cat "$T"/h*.log; exit 1; }; sleep 0.1
done
"$U" ctl --socket "$T/h1.sock" cluster          # three nodes; on "web" two remotes

# 3. Each guest takes a DHCP address (from the pool shared through etcd) and registers the
#    name web$i; the gateway (10.70.0.1 on every host) is its name server.
printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router\nexit 0\n' > "$T/udhcpc.sh"
chmod +x "$T/udhcpc.sh"
for i in 1 2 3; do
  ip netns exec $P-g$i busybox udhcpc -i eth0 -q -n -t 5 -T 1 -s "$T/udhcpc.sh" -x hostname:web$i
  mkdir -p /etc/netns/$P-g$i
  printf 'nameserver 10.70.0.1\nsearch usernet\n' > /etc/netns/$P-g$i/resolv.conf
done
for i in 1 2 3; do ip -n $P-g$i -4 -br addr show eth0; done   # three different addresses

# 4. Across the hosts: names resolve on every node, guests ping each other by name.
n=0; until ip netns exec $P-g1 busybox nslookup web3.usernet 10.70.0.1 >/dev/null 2>&1; do
  n=$((n+1)); [ $n -lt 50 ] || { echo "web3 does not resolve on h1"; exit 1; }; sleep 0.1
done
ip netns exec $P-g1 busybox nslookup web3.usernet 10.70.0.1
ip netns exec $P-g1 ping -c 2 web3
ip netns exec $P-g3 ping -c 2 web2.usernet
"$U" ctl --socket "$T/h2.sock" leases
"$U" ctl --socket "$T/h3.sock" cluster

# Services: see below (README, "Cluster mode on etcd").

if [ "${KEEP:-}" = 1 ]; then
  echo "running; e.g.: ip netns exec $P-g2 ping web1 | $U ctl --socket $T/h1.sock cluster"
  echo "press Enter to stop and clean up"
  read -r _
fi
echo "cluster demo: ok"
