//! Bad input from a device: garbage, corruption, wrong sequence numbers, wrong shapes. Each gives
//! a clear error or a retry; nothing panics or hangs.

use ciborium::Value;
use fieldpatch_drivers::smp::commands::{
    AppInfo, Command, Echo, ImageStateRead, ImageUpload, McumgrParams,
};
use fieldpatch_drivers::smp::frame::{self, FrameDecoder};
use fieldpatch_drivers::smp::{SmpClient, SmpError, Timeouts};
use fieldpatch_drivers::transport::UdpLink;
use std::time::Duration;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn parse_all(packet: &[u8]) {
    let seq = packet.get(6).copied().unwrap_or(0);
    let _ = Echo::parse_response(packet, seq);
    let _ = McumgrParams::parse_response(packet, seq);
    let _ = AppInfo::parse_response(packet, seq);
    let _ = ImageStateRead::parse_response(packet, seq);
    let _ = ImageUpload::parse_response(packet, seq);
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let valid = frame::encode(&Echo { text: "x".repeat(300) }.to_bytes(1).unwrap());
    for round in 0..3000 {
        let mut bytes = if round % 2 == 0 {
            (0..(rng.next() % 600) as usize).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            valid.clone()
        };
        for _ in 0..(rng.next() % 4) {
            if !bytes.is_empty() {
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
        }
        let mut d = FrameDecoder::new(1024);
        for piece in bytes.chunks(1 + (rng.next() % 130) as usize) {
            for packet in d.push(piece).into_iter().flatten() {
                parse_all(&packet);
            }
        }
        parse_all(&bytes);
    }
}

/// A hostile device on UDP: answers every request with what `reply` makes of it.
fn hostile(reply: fn(&[u8]) -> Vec<Vec<u8>>) -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            for r in reply(&buf[..n]) {
                let _ = sock.send_to(&r, from);
            }
        }
    });
    addr
}

fn rsp(req: &[u8], seq: u8, body: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    ciborium::into_writer(body, &mut b).unwrap();
    let mut h = req[..8].to_vec();
    h[0] += 1;
    h[2..4].copy_from_slice(&(b.len() as u16).to_be_bytes());
    h[6] = seq;
    h.extend(b);
    h
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

async fn client(addr: std::net::SocketAddr) -> SmpClient<UdpLink> {
    let mut c = SmpClient::new(UdpLink::connect(addr).await.unwrap());
    c.timeouts = Timeouts {
        request: Duration::from_millis(150),
        first_chunk: Duration::from_millis(300),
        retries: 2,
        backoff: Duration::from_millis(10),
    };
    c
}

#[tokio::test]
async fn wrong_sequence_numbers_are_ignored_then_time_out() {
    let addr = hostile(|req| {
        vec![rsp(req, req[6].wrapping_add(1), &Value::Map(vec![(text("r"), text("late"))]))]
    });
    let e = client(addr).await.echo("hi").await.unwrap_err();
    assert!(matches!(e, SmpError::Timeout { attempts: 3, .. }), "{e}");
}

#[tokio::test]
async fn stale_answers_before_the_right_one_are_skipped() {
    let addr = hostile(|req| {
        vec![
            rsp(req, req[6].wrapping_sub(1), &Value::Map(vec![(text("r"), text("old"))])),
            vec![1, 2, 3],
            rsp(req, req[6], &Value::Map(vec![(text("r"), text("hi"))])),
        ]
    });
    assert_eq!(client(addr).await.echo("hi").await.unwrap(), "hi");
}

#[tokio::test]
async fn garbage_and_wrong_shapes_are_clear_errors() {
    let addr = hostile(|req| {
        let body =
            Value::Map(vec![(text("buf_size"), text("lots")), (text("buf_count"), 1.into())]);
        vec![rsp(req, req[6], &body)]
    });
    let e = client(addr).await.params().await.unwrap_err();
    assert!(matches!(e, SmpError::Shape(_)), "{e}");
    assert!(e.to_string().contains("buf_size"), "{e}");

    let addr = hostile(|req| {
        let mut r = rsp(req, req[6], &Value::Map(vec![]));
        r.extend([0xff, 0xff, 0xff]); // body longer than the header says
        vec![r]
    });
    let e = client(addr).await.echo("x").await.unwrap_err();
    assert!(matches!(e, SmpError::Malformed(_)), "{e}");
    assert!(e.to_string().contains("announces") && e.to_string().contains("3 attempts"), "{e}");
}

#[tokio::test]
async fn an_upload_offset_beyond_the_image_is_refused() {
    let addr = hostile(|req| {
        let body = if req[7] == 6 {
            Value::Map(vec![(text("buf_size"), 512.into()), (text("buf_count"), 2.into())])
        } else {
            Value::Map(vec![(text("off"), 99_999_999.into())])
        };
        vec![rsp(req, req[6], &body)]
    });
    let e = client(addr)
        .await
        .upload(&[0u8; 3000], Default::default(), &fieldpatch_drivers::progress::NoProgress)
        .await;
    let e = e.unwrap_err();
    assert!(e.to_string().contains("beyond the image length"), "{e}");
}

#[tokio::test]
async fn device_error_codes_stop_the_upload_with_their_meaning() {
    let addr = hostile(|req| {
        let body = if req[7] == 6 {
            Value::Map(vec![(text("buf_size"), 512.into()), (text("buf_count"), 2.into())])
        } else {
            Value::Map(vec![(
                text("err"),
                Value::Map(vec![(text("group"), 1.into()), (text("rc"), 13.into())]),
            )])
        };
        vec![rsp(req, req[6], &body)]
    });
    let e = client(addr)
        .await
        .upload(&[0u8; 3000], Default::default(), &fieldpatch_drivers::progress::NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, SmpError::Device(_)), "{e}");
    assert!(e.to_string().contains("flash access failed"), "{e}");
}

#[tokio::test]
async fn a_device_that_never_advances_makes_the_upload_give_up() {
    let addr = hostile(|req| {
        let body = if req[7] == 6 {
            Value::Map(vec![(text("buf_size"), 512.into()), (text("buf_count"), 2.into())])
        } else {
            Value::Map(vec![(text("off"), 0.into())])
        };
        vec![rsp(req, req[6], &body)]
    });
    let e = client(addr)
        .await
        .upload(&[0u8; 3000], Default::default(), &fieldpatch_drivers::progress::NoProgress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("without making progress"), "{e}");
}

#[tokio::test]
async fn a_damaged_answer_is_asked_for_again() {
    // The first answer to each sequence number is damaged CBOR, the second (to the retry) is fine.
    let addr = hostile(|req| {
        if req[6] % 2 == 0 {
            let mut r = rsp(req, req[6], &Value::Map(vec![(text("r"), text("hi"))]));
            let n = r.len();
            r[n - 3] = 0xff;
            r.truncate(n - 1);
            r[2..4].copy_from_slice(&((n - 9) as u16).to_be_bytes());
            vec![r]
        } else {
            vec![rsp(req, req[6], &Value::Map(vec![(text("r"), text("hi"))]))]
        }
    });
    assert_eq!(client(addr).await.echo("hi").await.unwrap(), "hi");
}
