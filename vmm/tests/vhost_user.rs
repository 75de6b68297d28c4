//! The vhost-user protocol of `vmm -machine vhost-user`, driven by a small frontend written
//! here over the real socket (runs everywhere; the UML tests drive it with a real kernel).

mod common;

use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const GET_FEATURES: u32 = 1;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const GET_CONFIG: u32 = 24;
const NEED_REPLY: u32 = 0x8;

/// One frontend connection.
struct Frontend(UnixStream);

impl Frontend {
    fn connect(p: &Path) -> Frontend {
        let s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Frontend(s)
    }

    fn send(&mut self, code: u32, flags: u32, body: &[u8], fds: &[i32]) {
        let mut m = Vec::new();
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&(0x1 | flags).to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        if fds.is_empty() {
            self.0.write_all(&m).unwrap();
        } else {
            let n = self.0.send_with_fds(&[&m[..]], fds).unwrap();
            assert_eq!(n, m.len());
        }
    }

    /// Reads one reply: (code, payload).
    fn reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 12];
        self.0.read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        assert_eq!(w(4) & 0x4, 0x4, "reply flag");
        let mut body = vec![0u8; w(8) as usize];
        self.0.read_exact(&mut body).unwrap();
        (w(0), body)
    }

    fn u64_reply(&mut self, code: u32) -> u64 {
        self.send(code, 0, &[], &[]);
        let (c, b) = self.reply();
        assert_eq!((c, b.len()), (code, 8));
        u64::from_le_bytes(b.try_into().unwrap())
    }

    /// A request with NEED_REPLY; returns the ack value (0 = success).
    fn acked(&mut self, code: u32, body: &[u8], fds: &[i32]) -> u64 {
        self.send(code, NEED_REPLY, body, fds);
        let (c, b) = self.reply();
        assert_eq!((c, b.len()), (code, 8));
        u64::from_le_bytes(b.try_into().unwrap())
    }
}

fn mem_table(regions: &[(u64, u64, u64)], room_for: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, size, uaddr) in regions {
        for v in [gpa, size, uaddr, 0u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.resize(8 + 32 * room_for.max(regions.len()), 0);
    b
}

#[test]
fn handshake_config_and_uml_sized_mem_table() {
    let dir = tempfile::tempdir().unwrap();
    let vu = dir.path().join("vu.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("-machine")
        .arg(format!("vhost-user,socket={}", vu.display()))
        .args([
            "-chardev",
            "null,id=n0",
            "-device",
            "virtio-serial,max_ports=4",
        ])
        .args(["-device", "virtserialport,chardev=n0,name=test.0,id=p0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _vmm = Proc { child, name: "vmm" };
    wait_for_path(&vu, Duration::from_secs(10));

    let mut f = Frontend::connect(&vu);
    f.send(SET_OWNER, 0, &[], &[]);
    let feat = f.u64_reply(GET_FEATURES);
    for bit in [1, 32, 30] {
        assert!(
            feat & (1 << bit) != 0,
            "feature bit {bit} missing in {feat:#x}"
        );
    }
    let proto = f.u64_reply(GET_PROTOCOL_FEATURES);
    assert_eq!(proto & 0x8, 0x8, "REPLY_ACK");
    assert_eq!(proto & 0x200, 0x200, "CONFIG");
    assert_eq!(
        proto & (1 << 14),
        0,
        "INBAND_NOTIFICATIONS must not be offered"
    );
    f.send(
        SET_PROTOCOL_FEATURES,
        0,
        &(0x8u64 | 0x200).to_le_bytes(),
        &[],
    );
    assert_eq!(f.u64_reply(GET_QUEUE_NUM), 10, "2 * (max_ports + 1) queues");

    // GET_CONFIG as UML asks: offset 0, size = offset + len; the reply is exactly that size.
    let mut cfg = Vec::new();
    for v in [0u32, 8, 0] {
        cfg.extend_from_slice(&v.to_le_bytes());
    }
    f.send(GET_CONFIG, 0, &cfg, &[]);
    let (c, b) = f.reply();
    assert_eq!((c, b.len()), (GET_CONFIG, 12 + 8));
    assert_eq!(&b[12 + 4..12 + 8], &4u32.to_le_bytes(), "max_nr_ports");

    // SET_MEM_TABLE: one region in a payload sized for two (as UML sends it) is accepted.
    let mem: File = tempfile::tempfile().unwrap();
    mem.set_len(1 << 20).unwrap();
    let fd = mem.as_raw_fd();
    let one = mem_table(&[(0, 1 << 20, 0x7000_0000)], 2);
    assert_eq!(f.acked(SET_MEM_TABLE, &one, &[fd]), 0);
    // A payload shorter than its regions, or a region without fd, is refused.
    let short = &mem_table(&[(0, 1 << 20, 0x7000_0000)], 1)[..30];
    assert_ne!(f.acked(SET_MEM_TABLE, short, &[fd]), 0);
    assert_ne!(f.acked(SET_MEM_TABLE, &one, &[]), 0);
    // Unknown requests are refused, and the session goes on.
    assert_ne!(f.acked(99, &[], &[]), 0);
    assert!(f.u64_reply(GET_FEATURES) & (1 << 32) != 0);

    // A message header that promises more than the protocol allows ends the session ...
    f.send(GET_FEATURES, 0, &vec![0u8; 0x1001], &[]);
    let mut b = [0u8; 1];
    assert!(matches!(f.0.read(&mut b), Ok(0) | Err(_)));
    // ... and the next frontend is served.
    let mut g = Frontend::connect(&vu);
    assert!(g.u64_reply(GET_FEATURES) & (1 << 32) != 0);
}
