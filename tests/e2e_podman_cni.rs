//! Rootful Podman 4.3 with `network_backend = "cni"` and a conflist of type `usernet` (issue
//! 13): two containers on one network reach each other by name, reach a server on the host's
//! loopback through NAT, one publishes `-p 127.0.0.1:PORT:80` to a server that only listens,
//! and `podman rm` frees the address. Podman runs the plugin exactly as in the field (VERSION
//! first, `K8S_POD_NAME` in `CNI_ARGS`, `portMappings` and `aliases` in `runtimeConfig`).
//!
//! Podman is isolated: its own containers.conf (`CONTAINERS_CONF`), `--root`/`--runroot` in a
//! temporary directory, vfs storage, an image imported offline from busybox-static. Needs root.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::{BIN, ctl_output};
use common::{free_port, http_get, require_root, stop_pidfile};

/// Podman's world for this test, torn down on drop.
struct World {
    dir: PathBuf,
}

impl World {
    fn podman(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .arg("120")
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .expect("run podman")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("cni.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.state().join("daemon.log")).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&ctl_output(&self.socket(), args).stdout).into_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        stop_pidfile(&self.state().join("daemon.pid"));
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("run"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A static busybox: the image's only binary.
fn static_busybox() -> Option<PathBuf> {
    let p = Path::new("/bin/busybox");
    let out = Command::new("ldd").arg(p).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (p.exists() && text.contains("not a dynamic executable")).then(|| p.to_path_buf())
}

#[test]
fn podman_cni_names_nat_publish_and_rm() {
    if !require_root("podman_cni_names_nat_publish_and_rm") {
        return;
    }
    let have = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    let Some(busybox) = static_busybox().filter(|_| have) else {
        assert!(
            std::env::var_os("USERNET_REQUIRE_PRIV").is_none(),
            "podman, runc or busybox-static missing (scripts/test.sh installs them)"
        );
        println!(
            "SKIP podman_cni_names_nat_publish_and_rm: podman, runc or busybox-static missing"
        );
        return;
    };
    let dir = PathBuf::from(format!("/tmp/unpc{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let w = World { dir: dir.clone() };
    for d in ["bin", "net.d", "rootfs/bin", "rootfs/www", "state"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::os::unix::fs::symlink(BIN, dir.join("bin/usernet")).expect("plugin symlink");
    // The image: busybox-static and a page.
    std::fs::copy(&busybox, dir.join("rootfs/bin/busybox")).expect("copy busybox");
    for a in ["sh", "httpd", "wget", "ping", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(a)).expect("applet");
    }
    std::fs::write(dir.join("rootfs/www/index.html"), "served by web\n").expect("page");
    let tar = dir.join("ubox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
enable_port_reservation = false
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
network_config_dir = "{netd}"
"#,
            bin = dir.join("bin").display(),
            netd = dir.join("net.d").display()
        ),
    )
    .expect("containers.conf");
    std::fs::write(
        dir.join("net.d/unet.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "unet",
            "plugins": [{
                "type": "usernet",
                "subnet": "10.84.0.0/24",
                "socket": w.socket(),
                "state_dir": w.state(),
                "dns_upstreams": ["127.0.0.1:9"],
                "capabilities": {"portMappings": true, "aliases": true},
            }],
        })
        .to_string(),
    )
    .expect("conflist");
    w.podman_ok(&["import", tar.to_str().expect("utf-8"), "localhost/ubox"]);

    // A server on the host's loopback, for NAT.
    let host = std::net::TcpListener::bind("127.0.0.1:0").expect("host server");
    let host_port = host.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in host.incoming().take(4).flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut buf);
            let body = "from the host loopback\n";
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });

    // A server that only listens, published on the host's loopback.
    let hp = free_port();
    let publish = format!("127.0.0.1:{hp}:80");
    w.podman_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "unet",
        "-p",
        &publish,
        "localhost/ubox",
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let body = http_get(hp, "/index.html", 50);
    assert_eq!(
        body,
        "served by web\n",
        "published port\n{}",
        w.daemon_log()
    );
    let web_ip = w
        .podman_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.unet.IPAddress}}",
            "web",
        ])
        .trim()
        .to_string();
    assert!(web_ip.starts_with("10.84.0."), "{web_ip}");

    // A second container: web by name, the host's loopback through NAT (the gateway address).
    // Only the network's DNS server in resolv.conf (never the host's).
    let script =
        format!("wget -q -O- http://web/index.html && wget -q -O- http://10.84.0.1:{host_port}/");
    let out = w.podman_ok(&[
        "run",
        "--rm",
        "--name",
        "client",
        "--network",
        "unet",
        "--dns",
        "10.84.0.1",
        "--dns-search",
        "usernet",
        "localhost/ubox",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(out, "served by web\nfrom the host loopback\n");

    // podman rm: DEL frees the address, the name and the forward.
    let leases = w.ctl(&["leases"]);
    assert!(leases.contains(&web_ip), "{leases}");
    w.podman_ok(&["rm", "-f", "-t", "0", "web"]);
    let leases = w.ctl(&["leases"]);
    assert!(!leases.contains(&web_ip), "address freed: {leases}");
    let ports = w.ctl(&["ports"]);
    assert!(!ports.contains("\"web\""), "{ports}");
    assert!(http_get(hp, "/index.html", 1).is_empty(), "forward gone");
    let left = std::fs::read_dir(w.state().join("attachments"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no attachment recorded after rm");
}
