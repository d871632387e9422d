//! The benchmark, the pings to the peer and the GSO frame: the parts of
//! a session that drive traffic themselves.

use super::{Session, PING_DATA, PING_ID, PING_TIMEOUT_US, STALL_US};
use crate::eth::{self, ETH_HDR, ICMP_ECHO_REQUEST, ICMP_START};
use crate::net::dev::{TxMeta, F_CSUM, F_HOST_TSO4};
use crate::net::frame;
use crate::plan::NetPlan;
use crate::time;
use crate::virtio::data::fill_pattern;
use core::fmt::Write as _;

impl Session {
    pub(super) fn bench_g2h(&mut self, np: &NetPlan, now: u64) -> bool {
        if self.g2h_sent == 0 {
            let (mac, nic, len) = (self.nic.mac, self.index, self.bench_len);
            frame::data(
                self.template,
                mac,
                frame::BENCH_G2H,
                nic,
                0,
                len,
                frame::BENCH_SEED,
            );
            self.g2h_t0 = now;
            self.progress_at = now;
        }
        if self.g2h_acked >= np.bench_frames {
            self.g2h_us = Some((now - self.g2h_t0).max(1));
            self.next_phase(np, now);
            return false;
        }
        if now - self.progress_at > STALL_US {
            let _ = write!(
                self.errors,
                "guest-to-host benchmark stalled: {} sent, {} acknowledged of {}; ",
                self.g2h_sent, self.g2h_acked, np.bench_frames
            );
            self.next_phase(np, now);
            return false;
        }
        let mut sent = false;
        let len = self.bench_len;
        while self.g2h_sent < np.bench_frames && self.g2h_sent - self.g2h_acked < np.window {
            let seq = self.g2h_sent as u32;
            let t = &self.template[..len];
            if !self.nic.send(|b| {
                b[..len].copy_from_slice(t);
                b[ETH_HDR + 8..ETH_HDR + 12].copy_from_slice(&seq.to_le_bytes());
                TxMeta {
                    len,
                    ..TxMeta::default()
                }
            }) {
                break;
            }
            self.g2h_sent += 1;
            sent = true;
        }
        sent
    }

    pub(super) fn ping(&mut self, np: &NetPlan, now: u64) -> bool {
        if let Some(at) = self.ping_at {
            if now - at < PING_TIMEOUT_US {
                return false;
            }
            self.rtt_lost += 1;
            self.ping_at = None;
            self.ping_seq = self.ping_seq.wrapping_add(1);
        }
        if self.rtt_n + self.rtt_lost >= np.bench_pings {
            self.next_phase(np, now);
            return false;
        }
        let (mac, ip, peer, peer_mac) = (
            self.nic.mac,
            self.ip.unwrap_or([0; 4]),
            self.peer.unwrap_or([0; 4]),
            self.peer_mac.unwrap_or(eth::BROADCAST),
        );
        let (seq, id, offload) = (self.ping_seq, self.ip_id, self.nic.has(F_CSUM));
        let mut data = [0u8; PING_DATA];
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
        // The clock starts before the notification: the device may do the
        // whole round trip while the guest is still exited for it.
        let t = time::now_us();
        let sent = self.nic.send(|b| {
            let len = eth::build_echo(
                b,
                (peer_mac, mac),
                (ip, peer),
                ICMP_ECHO_REQUEST,
                PING_ID,
                seq,
                &data,
                id,
                offload,
            );
            TxMeta {
                len,
                csum: offload.then_some((ICMP_START as u16, 2)),
                tso: None,
            }
        });
        if sent {
            self.ip_id = self.ip_id.wrapping_add(1);
            self.nic.flush_tx();
            self.ping_at = Some(t);
        }
        sent
    }

    /// One TCP/IPv4 frame of `probe.net_tso` payload bytes for the device to
    /// segment (GSO TCPV4, NEEDS_CSUM over the TCP segment).
    pub(super) fn send_tso(&mut self, np: &NetPlan) {
        if !self.nic.has(F_HOST_TSO4) {
            let _ = write!(
                self.errors,
                "HOST_TSO4 not negotiated (offered {:#x}); ",
                self.nic.offered
            );
            self.tso_sent = true;
            return;
        }
        let (mac, src, dst) = (
            self.nic.mac,
            self.ip.unwrap_or([0; 4]),
            self.peer.unwrap_or([255; 4]),
        );
        let dst_mac = self.peer_mac.unwrap_or(eth::BROADCAST);
        let payload = np.tso as usize;
        let mss = self.nic.mtu - 40;
        let seed = frame::TSO_SEED | self.index as u64;
        let id = self.ip_id;
        const HDRS: usize = ETH_HDR + 20 + 20;
        self.tso_sent = self.nic.send_big(|b| {
            eth::write_eth(b, dst_mac, mac, eth::ETHERTYPE_IPV4);
            eth::write_ipv4(b, src, dst, eth::PROTO_TCP, id, 20 + payload);
            let tcp = &mut b[ETH_HDR + 20..HDRS];
            tcp.fill(0);
            eth::put16(tcp, 0, 0x7072); // source port
            eth::put16(tcp, 2, 9); // discard
            tcp[12] = 5 << 4;
            tcp[13] = 0x18; // PSH, ACK
            eth::put16(tcp, 14, 65535);
            let pseudo = eth::tcp_pseudo(src, dst, 20 + payload);
            eth::put16(tcp, 16, pseudo);
            fill_pattern(seed, 0, &mut b[HDRS..HDRS + payload]);
            TxMeta {
                len: HDRS + payload,
                csum: Some(((ETH_HDR + 20) as u16, 16)),
                tso: Some((HDRS as u16, mss)),
            }
        });
        if self.tso_sent {
            self.tso_mss = mss;
            self.ip_id = self.ip_id.wrapping_add(1);
        }
    }
}
