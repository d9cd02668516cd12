//! Without runc the harness says exactly what to install. (Its own test binary: it changes the
//! environment.)

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

#[test]
fn missing_runc_names_the_packages_to_install() {
    std::env::set_var("KUSTODY_TESTCLUSTER_RUNC", "/nonexistent/runc");
    let Err(e) = kustody_testcluster::TestCluster::start() else { panic!("started without runc") };
    let msg = format!("{e:#}");
    assert!(msg.contains("needs runc"), "{msg}");
    assert!(msg.contains("apt-get install -y runc busybox-static"), "{msg}");
}
