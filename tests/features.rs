//! What a build's cargo features change at run time: a config that asks for
//! Kubernetes discovery is served by a build with the `kubernetes` feature
//! (the default), and refused, with the key and the reason, by
//! `check-config` and `serve` in a build without it
//! (`cargo test --no-default-features --test features`).

use std::process::Command;

const KUBERNETES: &str = "[kubernetes]\nenabled = true\napi_server = \"http://127.0.0.1:1\"\n\
     [[kubernetes.services]]\nname = \"backend\"\n";

fn mulligan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mulligan"))
        .args(args)
        .output()
        .expect("running mulligan")
}

#[test]
fn kubernetes_discovery_is_refused_only_by_a_build_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("m.toml");
    std::fs::write(&file, KUBERNETES).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let check = mulligan(&["check-config", file]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    if cfg!(feature = "kubernetes") {
        assert!(check.status.success(), "{stderr}");
        return;
    }
    let want = format!("{file}:2:11: kubernetes.enabled: this mulligan was built without");
    assert!(!check.status.success());
    assert!(stderr.starts_with(&want), "check-config said: {stderr}");
    // serve refuses it the same way, before binding a port.
    let serve = mulligan(&[
        "serve",
        "--config",
        file,
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with(&want), "serve said: {stderr}");
    assert!(serve.stdout.is_empty(), "serve announced ports");
}
