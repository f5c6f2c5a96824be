//! The standalone `fieldpatch-lab` binary: a person can run an SMP device by hand.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn smp_udp_device_answers_an_echo() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldpatch-lab"))
        .args(["smp-udp", "--bind", "127.0.0.1:0", "--rtt-ms", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _guard = Kill(child);
    let addr: std::net::SocketAddr = line.trim().parse().unwrap();

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // SMP v2 write, group 0 (OS), seq 7, id 0 (echo), body {"d": "hi"}.
    let body = [0xa1, 0x61, b'd', 0x62, b'h', b'i'];
    let mut packet = vec![0x0a, 0, 0, body.len() as u8, 0, 0, 7, 0];
    packet.extend_from_slice(&body);
    sock.send_to(&packet, addr).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..8], &[0x0b, 0, 0, 6, 0, 0, 7, 0]);
    assert_eq!(&buf[8..n], &[0xa1, 0x61, b'r', 0x62, b'h', b'i']);
}

#[test]
fn make_image_writes_a_parsable_mcuboot_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img.bin");
    let status = Command::new(env!("CARGO_BIN_EXE_fieldpatch-lab"))
        .args(["make-image", "--version", "2.3.4", "--size", "1000"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success());
    let info = fieldpatch_lab::smp::mcuboot::parse(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(info.version.to_string(), "2.3.4");
    assert!(info.valid);
}
