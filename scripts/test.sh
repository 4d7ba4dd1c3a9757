#!/usr/bin/env bash
# Runs usernet's whole test suite: unit, memory-link integration, real-kernel (TAP, AF_PACKET,
# namespaces), end-to-end CLI tests and doc tests.
#
# The kernel tests need root; without it they print "SKIP ..." and pass, unless
# USERNET_REQUIRE_PRIV=1 (CI sets it) makes them fail instead. As root on Debian/Ubuntu, missing
# test tools (iproute2, ping, iperf3, busybox-static, dhclient, dig, dnsmasq, promtool, rootlesskit, podman,
# runc, the reference CNI plugins; QEMU and a kernel image for the VM tests in e2e_vm; protoc and
# etcd for the cluster feature, ...) are installed with apt-get first.
#
# Then the feature `cluster` (off by default) is tested on its own: its unit tests and
# tests/e2e_cluster{,_proxy,_service}.rs, built with `--features cluster` (skipped
# when arguments are given).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v tshark >/dev/null 2>&1 || missing+=(tshark)
# A static busybox (busybox-static; it has udhcpc too): e2e_podman builds its image from it.
bb=$(command -v busybox 2>/dev/null || true)
{ [ -n "$bb" ] && ! ldd "$bb" >/dev/null 2>&1; } || missing+=(busybox-static)
command -v dhclient >/dev/null 2>&1 || missing+=(isc-dhcp-client)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
# The cluster feature: protoc and its well-known .proto files to build the etcd client, and an
# etcd server for tests/e2e_cluster.rs.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v rootlesskit >/dev/null 2>&1 || missing+=(rootlesskit)
command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v useradd >/dev/null 2>&1 || missing+=(passwd)
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || missing+=(linux-image-amd64)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test tools: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: missing ${missing[*]}; the kernel tests that need them will fail (install them or run as root)" >&2
  fi
fi

cargo test --locked "$@"
if [ $# -eq 0 ]; then
  cargo test --locked --features cluster --lib cluster
  cargo test --locked --features cluster --test e2e_cluster
  cargo test --locked --features cluster --test e2e_cluster_proxy
  cargo test --locked --features cluster --test e2e_cluster_service
fi
