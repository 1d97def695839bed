//! Standard clients on a LAN: two `hyphae up` devices, each in a network namespace of its own on
//! one bridge, that find each other by mDNS alone; matrix-nio (unmodified, end-to-end encryption
//! on) runs `tests/clients/nio_flows.py` with Alice on one device and Bob on the other, from a
//! third host on the same LAN that runs no node (a laptop beside the phones).
//! Needs root, `ip` (iproute2) and matrix-nio (HYPHAE_NIO_PYTHON, which `scripts/test.sh` sets);
//! without them the test prints SKIPPED and passes (fails under `CI=true`).

mod lan;

use std::process::Command;
use std::time::Instant;

use lan::namespaces::{Netns, skip, skip_reason};
use lan::{CLIENT_PORT, Device, STEP, eventually};

const NIO_FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/nio_flows.py");

#[test]
fn matrix_nio_chats_across_two_devices_that_found_each_other_by_mdns() {
    let test = "matrix_nio_chats_across_two_devices_that_found_each_other_by_mdns";
    if let Some(reason) = skip_reason() {
        skip(test, &reason);
        return;
    }
    let Ok(python) = std::env::var("HYPHAE_NIO_PYTHON") else {
        skip(
            test,
            "HYPHAE_NIO_PYTHON is not set (scripts/test.sh installs matrix-nio)",
        );
        return;
    };
    let started = Instant::now();
    let mut net = Netns::new("nc");
    let bridge = net.bridge("br").unwrap();
    let (ns_a, ns_b, ns_laptop) = (
        net.host("a").unwrap(),
        net.host("b").unwrap(),
        net.host("l").unwrap(),
    );
    net.plug(&ns_a, "eth0", &bridge, "10.199.31.1/24").unwrap();
    net.plug(&ns_b, "eth0", &bridge, "10.199.31.2/24").unwrap();
    net.plug(&ns_laptop, "eth0", &bridge, "10.199.31.3/24")
        .unwrap();

    // Nothing but the defaults: no bootstrap peer, no address of the other device.
    let a = Device::start("A", &ns_a, "10.199.31.1", &[]);
    let b = Device::start("B", &ns_b, "10.199.31.2", &[]);
    // Two users of the devices' own, only to know when mDNS has done its work.
    let (probe_a, probe_b) = (a.register("probe"), b.register("probe"));
    eventually(STEP, "A's server to find B's by mDNS", || {
        probe_a.can_look_up(&a, &probe_b.id)
    });

    let store = tempfile::tempdir().unwrap();
    let output = Command::new("ip")
        .args(["netns", "exec", &ns_laptop, &python, NIO_FLOWS])
        .arg(format!("http://10.199.31.1:{CLIENT_PORT}"))
        .arg(format!("http://10.199.31.2:{CLIENT_PORT}"))
        .arg(store.path())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("OK"),
        "nio across the LAN failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprintln!(
        "nio flows across the LAN done after {:?}",
        started.elapsed()
    );
    drop((a, b));
    drop(net);
}
