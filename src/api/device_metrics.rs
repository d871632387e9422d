//! The devices' counters as the API reports them: one table per device
//! kind (Firecracker's JSON field, the Prometheus family, its help, the
//! value), from which both the metrics file's groups and `GET /metrics`
//! are made, so the two never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use vmm::vm::DeviceCountersSnapshot;

/// One counter of one device.
struct Counter {
    /// The field in Firecracker's metrics group.
    fc: &'static str,
    /// The Prometheus family (`_total` counters).
    prom: &'static str,
    help: &'static str,
    value: u64,
}

/// One device's counters.
struct Device {
    /// Firecracker's group (`block`, `net`, `vsock`, `entropy`); devices
    /// with an ID also get a group `<group>_<id>`.
    group: &'static str,
    /// The Prometheus label naming the device, and its value.
    label: Option<(&'static str, String)>,
    counters: Vec<Counter>,
}

fn c(fc: &'static str, prom: &'static str, help: &'static str, value: u64) -> Counter {
    Counter {
        fc,
        prom,
        help,
        value,
    }
}

/// Every device of the running VM; `drives` and `nets` are the IDs in
/// the order the VM was built with.
fn devices(drives: &[String], nets: &[String], s: &DeviceCountersSnapshot) -> Vec<Device> {
    let mut out = Vec::new();
    for (id, b) in drives.iter().zip(&s.block) {
        out.push(Device {
            group: "block",
            label: Some(("drive", id.clone())),
            counters: vec![
                c(
                    "request_count",
                    "utsuwa_block_requests_total",
                    "Block requests completed.",
                    b.requests,
                ),
                c(
                    "read_bytes",
                    "utsuwa_block_read_bytes_total",
                    "Bytes read from the image.",
                    b.read_bytes,
                ),
                c(
                    "write_bytes",
                    "utsuwa_block_write_bytes_total",
                    "Bytes written to the image.",
                    b.write_bytes,
                ),
                c(
                    "flush_count",
                    "utsuwa_block_flushes_total",
                    "Flushes completed.",
                    b.flushes,
                ),
                c(
                    "discard_count",
                    "utsuwa_block_discards_total",
                    "Discards and write-zeroes completed.",
                    b.discards,
                ),
                c(
                    "execute_fails",
                    "utsuwa_block_errors_total",
                    "Requests answered with an error.",
                    b.errors,
                ),
            ],
        });
    }
    for (id, n) in nets.iter().zip(&s.net) {
        out.push(Device {
            group: "net",
            label: Some(("iface", id.clone())),
            counters: vec![
                c(
                    "rx_packets_count",
                    "utsuwa_net_rx_frames_total",
                    "Frames from the TAP delivered to the guest.",
                    n.rx_frames,
                ),
                c(
                    "rx_bytes_count",
                    "utsuwa_net_rx_bytes_total",
                    "Bytes from the TAP delivered to the guest.",
                    n.rx_bytes,
                ),
                c(
                    "rx_dropped",
                    "utsuwa_net_rx_dropped_total",
                    "Frames from the TAP dropped (too large for the guest's buffers or malformed).",
                    n.rx_dropped,
                ),
                c(
                    "tx_packets_count",
                    "utsuwa_net_tx_frames_total",
                    "Frames from the guest written to the TAP.",
                    n.tx_frames,
                ),
                c(
                    "tx_bytes_count",
                    "utsuwa_net_tx_bytes_total",
                    "Bytes from the guest written to the TAP.",
                    n.tx_bytes,
                ),
                c(
                    "tx_dropped",
                    "utsuwa_net_tx_dropped_total",
                    "Frames from the guest dropped (malformed or refused by the TAP).",
                    n.tx_dropped,
                ),
                c(
                    "tx_malformed_frames",
                    "utsuwa_net_bad_chains_total",
                    "Descriptor chains refused.",
                    n.bad_chains,
                ),
            ],
        });
    }
    if let Some(r) = &s.rng {
        out.push(Device {
            group: "entropy",
            label: None,
            counters: vec![
                c(
                    "entropy_event_count",
                    "utsuwa_rng_requests_total",
                    "Entropy requests answered.",
                    r.requests,
                ),
                c(
                    "entropy_bytes",
                    "utsuwa_rng_bytes_total",
                    "Random bytes given to the guest.",
                    r.bytes,
                ),
                c(
                    "host_rng_fails",
                    "utsuwa_rng_errors_total",
                    "Requests returned empty (malformed, or no host entropy).",
                    r.errors,
                ),
            ],
        });
    }
    if let Some(v) = &s.vsock {
        out.push(Device {
            group: "vsock",
            label: None,
            counters: vec![
                c(
                    "rx_packets_count",
                    "utsuwa_vsock_rx_packets_total",
                    "Data packets to the guest.",
                    v.rx_packets,
                ),
                c(
                    "rx_bytes_count",
                    "utsuwa_vsock_rx_bytes_total",
                    "Payload bytes to the guest.",
                    v.rx_bytes,
                ),
                c(
                    "tx_packets_count",
                    "utsuwa_vsock_tx_packets_total",
                    "Data packets from the guest.",
                    v.tx_packets,
                ),
                c(
                    "tx_bytes_count",
                    "utsuwa_vsock_tx_bytes_total",
                    "Payload bytes from the guest.",
                    v.tx_bytes,
                ),
                c(
                    "conns_added",
                    "utsuwa_vsock_connections_total",
                    "Connections established.",
                    v.connections,
                ),
                c(
                    "conns_killed",
                    "utsuwa_vsock_resets_total",
                    "Connections reset.",
                    v.resets,
                ),
                c(
                    "packet_errors",
                    "utsuwa_vsock_errors_total",
                    "Packets or buffers refused as malformed.",
                    v.errors,
                ),
            ],
        });
    }
    out
}

/// Adds the devices' groups to Firecracker-style metrics: `<group>` sums
/// the devices of a kind, `<group>_<id>` is one device.
pub fn add_groups(
    g: &mut BTreeMap<String, BTreeMap<String, u64>>,
    drives: &[String],
    nets: &[String],
    s: &DeviceCountersSnapshot,
) {
    for dev in devices(drives, nets, s) {
        let mut groups = vec![dev.group.to_string()];
        if let Some((_, id)) = &dev.label {
            groups.push(format!("{}_{id}", dev.group));
        }
        for group in groups {
            let fields = g.entry(group).or_default();
            for ctr in &dev.counters {
                *fields.entry(ctr.fc.to_string()).or_default() += ctr.value;
            }
        }
    }
}

/// Appends the devices' counters in Prometheus' text format, one family
/// per counter with a line per device.
pub fn prometheus(
    out: &mut String,
    drives: &[String],
    nets: &[String],
    s: &DeviceCountersSnapshot,
) {
    let devs = devices(drives, nets, s);
    let mut done: Vec<&str> = Vec::new();
    for dev in &devs {
        for ctr in &dev.counters {
            if done.contains(&ctr.prom) {
                continue;
            }
            done.push(ctr.prom);
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} counter",
                ctr.prom, ctr.help, ctr.prom
            );
            for d in devs.iter().filter(|d| d.group == dev.group) {
                let value = d
                    .counters
                    .iter()
                    .find(|x| x.prom == ctr.prom)
                    .map_or(0, |x| x.value);
                match &d.label {
                    Some((key, id)) => {
                        let _ = writeln!(out, "{}{{{key}=\"{id}\"}} {value}", ctr.prom);
                    }
                    None => {
                        let _ = writeln!(out, "{} {value}", ctr.prom);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::virtio::block::BlockStatsSnapshot;
    use vmm::virtio::net::NetStatsSnapshot;
    use vmm::virtio::vsock::VsockStatsSnapshot;

    fn snapshot() -> DeviceCountersSnapshot {
        DeviceCountersSnapshot {
            block: vec![
                BlockStatsSnapshot {
                    requests: 3,
                    ..Default::default()
                },
                BlockStatsSnapshot {
                    requests: 4,
                    ..Default::default()
                },
            ],
            net: vec![NetStatsSnapshot {
                tx_frames: 7,
                ..Default::default()
            }],
            rng: None,
            vsock: Some(VsockStatsSnapshot {
                rx_bytes: 9,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn groups_sum_a_kind_and_name_each_device() {
        let mut g = BTreeMap::new();
        let drives = ["root".to_string(), "data".to_string()];
        add_groups(&mut g, &drives, &["eth0".into()], &snapshot());
        assert_eq!(g["block"]["request_count"], 7);
        assert_eq!(g["block_data"]["request_count"], 4);
        assert_eq!(g["net_eth0"]["tx_packets_count"], 7);
        assert_eq!(g["vsock"]["rx_bytes_count"], 9);
        assert!(!g.contains_key("entropy"));
    }

    #[test]
    fn prometheus_has_one_family_header_and_a_line_per_device() {
        let mut out = String::new();
        let drives = ["root".to_string(), "data".to_string()];
        prometheus(&mut out, &drives, &["eth0".into()], &snapshot());
        assert_eq!(
            out.matches("# TYPE utsuwa_block_requests_total counter")
                .count(),
            1
        );
        assert!(out.contains("utsuwa_block_requests_total{drive=\"root\"} 3\n"));
        assert!(out.contains("utsuwa_block_requests_total{drive=\"data\"} 4\n"));
        assert!(out.contains("utsuwa_net_tx_frames_total{iface=\"eth0\"} 7\n"));
        assert!(out.contains("utsuwa_vsock_rx_bytes_total 9\n"));
        assert!(!out.contains("utsuwa_rng_"));
    }
}
