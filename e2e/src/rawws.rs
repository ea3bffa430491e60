//! A WebSocket spoken by hand over a plain TCP socket, for the tests that must see what a
//! library client hides: whether the socket ends with a FIN or a reset, and bytes a
//! client keeps writing after the server refused it.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `path` on `addr` and reads the upgrade's answer up to its end (a client that
/// writes before it would have its first frames read with the request); the frames that
/// follow are left unread.
pub async fn upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("upgrade request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("the upgrade's answer"));
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// The header of a client frame (FIN set, `opcode`) of `len` payload bytes, masked with a
/// zero key (RFC 6455, 5.3: a client masks; a zero key leaves the payload as written).
pub fn masked_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut head = vec![0x80 | opcode];
    match len {
        0..=125 => head.push(0x80 | len as u8),
        126..=0xffff => {
            head.push(0x80 | 126);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            head.push(0x80 | 127);
            head.extend_from_slice(&len.to_be_bytes());
        }
    }
    head.extend_from_slice(&[0; 4]);
    head
}

/// How a server's socket ended, read to its end.
#[derive(Debug)]
pub struct Ending {
    /// The close frame's code, if one came.
    pub close_code: Option<u16>,
    /// `Ok` for an orderly end (FIN), the error for a reset.
    pub end: std::io::Result<()>,
}

/// Frames a server refuses, by name, with the close code each gets: a text message of
/// 100 KB (for a `maxFrameBytes` below it), one that is not UTF-8, 200 pings (for a
/// `limits.frameBurst` below that) and an unmasked frame.
pub fn refused_frames() -> Vec<(&'static str, Vec<u8>, u16)> {
    let not_utf8 = [b'{', 0xff, 0xfe, b'}'];
    vec![
        ("too-big", masked_header(0x1, 100_000), 1009),
        (
            "not-utf8",
            [&masked_header(0x1, 4)[..], &not_utf8].concat(),
            1007,
        ),
        ("pinger", masked_header(0x9, 0).repeat(200), 1008),
        ("unmasked", vec![0x81, 2, b'h', b'i'], 1002),
    ]
}

/// Each case of `cases` (see [`refused_frames`]) on a connection of its own, opened at
/// `path_of(name)`: the close code comes, then an orderly end (no reset), while the
/// client writes on.
pub async fn assert_refused(
    addr: SocketAddr,
    path_of: impl Fn(&str) -> String,
    cases: Vec<(&str, Vec<u8>, u16)>,
) {
    for (name, refused, code) in cases {
        let ending = refused_while_writing(addr, &path_of(name), &refused).await;
        assert_eq!(ending.close_code, Some(code), "{name}");
        assert!(ending.end.is_ok(), "{name}: not an orderly end: {ending:?}");
    }
}

/// Opens `path` on `addr`, sends `refused` (frames the server refuses), then 300 KB more as
/// a client would that had them queued (each write must be taken), and reads to the end.
pub async fn refused_while_writing(addr: SocketAddr, path: &str, refused: &[u8]) -> Ending {
    let mut tcp = upgrade(addr, path).await;
    tcp.write_all(refused).await.expect("the refused frames");
    for _ in 0..30 {
        let more = tcp.write_all(&[b'x'; 10_000]).await;
        more.unwrap_or_else(|e| panic!("{path}: the server still reads: {e}"));
    }
    read_to_end(&mut tcp).await
}

/// Reads the server frames of `tcp` to the socket's end (which must come within 10 s) and
/// finds the close frame.
pub async fn read_to_end(tcp: &mut TcpStream) -> Ending {
    let mut frames = Vec::new();
    let wait = std::time::Duration::from_secs(10);
    let end = tokio::time::timeout(wait, tcp.read_to_end(&mut frames))
        .await
        .expect("the server ends the socket")
        .map(drop);
    Ending {
        close_code: close_code(&frames),
        end,
    }
}

/// The code of the first close frame among unmasked server frames.
fn close_code(mut frames: &[u8]) -> Option<u16> {
    while let [first, second, rest @ ..] = frames {
        let (len, rest) = match second & 0x7f {
            126 => (
                u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
                &rest[2..],
            ),
            127 => (
                usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
                &rest[8..],
            ),
            n => (usize::from(n), rest),
        };
        let payload = rest.get(..len)?;
        if first & 0x0f == 0x8 {
            return Some(u16::from_be_bytes(payload.get(..2)?.try_into().ok()?));
        }
        frames = &rest[len..];
    }
    None
}
