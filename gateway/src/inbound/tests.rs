use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Frames of every length class (7-bit, 16-bit and 64-bit lengths, and their edges), as
/// tungstenite writes them, masked as a client's are or not; and how many of them count
/// (all but the whole messages).
fn frames(masked: bool) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    let mut counted = 0;
    let lengths = [0usize, 1, 125, 126, 127, 1000, 65_535, 65_536, 70_000];
    for (i, &len) in lengths.iter().enumerate() {
        let (opcode, fin) = match i % 4 {
            0 => (OpCode::Data(Data::Text), true),
            1 => (OpCode::Data(Data::Text), false),
            2 => (OpCode::Data(Data::Continue), i % 3 == 0),
            _ => (OpCode::Data(Data::Binary), true),
        };
        counted += u32::from(!(fin && matches!(opcode, OpCode::Data(Data::Text | Data::Binary))));
        let mut f = Frame::message(vec![b'a'; len], opcode, fin);
        if masked {
            f.header_mut().mask = Some([1, 2, 3, 4]);
        }
        f.format(&mut out).expect("format");
    }
    for mut control in [Frame::ping(vec![b'p'; 125]), Frame::pong(Vec::new())] {
        control.header_mut().mask = masked.then_some([9, 9, 9, 9]);
        control.format(&mut out).expect("format");
        counted += 1;
    }
    (out, counted)
}

#[test]
fn counts_every_frame_but_whole_messages_however_the_bytes_are_split() {
    for masked in [true, false] {
        let (bytes, n) = frames(masked);
        assert_eq!(n, 6, "5 whole messages of 11 frames");
        assert_eq!(FrameScan::default().feed(&bytes), n, "in one piece");
        // Splits at every offset of a header, including inside the extended lengths.
        for chunk in [1, 2, 3, 5, 7, 11, 256, 4096] {
            let mut scan = FrameScan::default();
            let counted: u32 = bytes.chunks(chunk).map(|c| scan.feed(c)).sum();
            assert_eq!(counted, n, "masked {masked}, chunks of {chunk}");
            assert_eq!(scan, FrameScan::Head, "ends between frames");
        }
    }
}

#[test]
fn empty_frames_each_count() {
    // Six bytes each: a masked empty continuation, what a fragment flood sends.
    let empty = [0x00u8, 0x80, 1, 2, 3, 4];
    let bytes: Vec<u8> = empty.iter().copied().cycle().take(6 * 1000).collect();
    assert_eq!(FrameScan::default().feed(&bytes), 1000);
    // Empty unmasked pings; then empty whole messages, which are commands.
    assert_eq!(FrameScan::default().feed(&[0x89u8, 0x00].repeat(10)), 10);
    assert_eq!(
        FrameScan::default().feed(&[0x81u8, 0x00, 0x82, 0x00].repeat(10)),
        0
    );
}

type Server = WebSocketStream<Metered<tokio::io::DuplexStream>>;

/// The server's next item; a read that waits (a miscounted budget stops reading) fails
/// the test rather than hanging it.
async fn next(server: &mut Server) -> Option<Result<Message, tungstenite::Error>> {
    let wait = std::time::Duration::from_secs(5);
    tokio::time::timeout(wait, server.next())
        .await
        .expect("read in time")
}

/// The server's next item is the read refused for too many frames.
async fn over_the_budget(server: &mut Server) {
    let e = next(server).await.expect("an item").expect_err("refused");
    assert!(too_many_frames(&e), "{e}");
}

/// A server stream on a metered socket, and the client end.
async fn pair(rate: f64, burst: u32) -> (Server, WebSocketStream<tokio::io::DuplexStream>) {
    let (server, client) = tokio::io::duplex(1 << 20);
    let server = Metered::new(server, rate, burst, &[]);
    (
        WebSocketStream::from_raw_socket(server, Role::Server, None).await,
        WebSocketStream::from_raw_socket(client, Role::Client, None).await,
    )
}

#[tokio::test]
async fn pings_beyond_the_burst_fail_the_read() {
    let (mut server, mut client) = pair(0.001, 20).await;
    for _ in 0..20 {
        client.send(Message::Ping("p".into())).await.expect("ping");
    }
    for _ in 0..20 {
        let m = next(&mut server).await.expect("a frame").expect("read");
        assert!(matches!(m, Message::Ping(_)), "{m:?}");
    }
    client.send(Message::Ping("p".into())).await.expect("ping");
    over_the_budget(&mut server).await;
}

#[tokio::test]
async fn a_message_that_never_ends_is_refused_by_its_fragments() {
    let (mut server, mut client) = pair(0.001, 100).await;
    let start = Frame::message(Vec::new(), OpCode::Data(Data::Text), false);
    client.send(Message::Frame(start)).await.expect("start");
    let fragment = || Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
    for _ in 0..100 {
        client
            .send(Message::Frame(fragment()))
            .await
            .expect("fragment");
    }
    over_the_budget(&mut server).await;
}

#[tokio::test]
async fn pings_within_the_rate_pass_commands_are_not_counted_and_rate_zero_counts_nothing() {
    // A burst of one, refilled at 1,000 a second: one ping every 20 ms passes.
    let (mut server, mut client) = pair(1000.0, 1).await;
    for _ in 0..10 {
        client.send(Message::Ping("p".into())).await.expect("ping");
        let m = next(&mut server).await.expect("a frame").expect("read");
        assert!(matches!(m, Message::Ping(_)), "{m:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Whole text messages are commands, left to the message rate.
    let (mut server, mut client) = pair(0.001, 1).await;
    for i in 0..100 {
        client
            .send(Message::text(format!("{i}")))
            .await
            .expect("send");
    }
    for i in 0..100 {
        let m = next(&mut server)
            .await
            .expect("a frame")
            .expect("not counted");
        assert_eq!(m, Message::text(format!("{i}")));
    }
    let (mut server, mut client) = pair(0.0, 1).await;
    for _ in 0..1000 {
        client.send(Message::Ping("p".into())).await.expect("ping");
    }
    for _ in 0..1000 {
        let m = next(&mut server).await.expect("a frame").expect("no limit");
        assert!(matches!(m, Message::Ping(_)));
    }
}

/// A frame as a client writes it (masked).
fn wire(mut frame: Frame) -> Vec<u8> {
    frame.header_mut().mask = Some([0, 0, 0, 0]);
    let mut out = Vec::new();
    frame.format(&mut out).expect("format");
    out
}

async fn read(metered: &mut Metered<tokio::io::DuplexStream>) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 1024];
    tokio::io::AsyncReadExt::read(metered, &mut buf).await
}

async fn read_in_time(metered: &mut Metered<tokio::io::DuplexStream>) -> std::io::Result<usize> {
    let wait = std::time::Duration::from_secs(5);
    tokio::time::timeout(wait, read(metered))
        .await
        .expect("read in time")
}

fn refused(e: std::io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<TooManyFrames>())
}

#[tokio::test]
async fn bytes_read_before_the_stream_are_counted_and_scanned_on_from() {
    use tokio::io::AsyncWriteExt;
    // The upgrade's read-ahead ends inside a frame's extended length: a counted frame
    // (the first fragment of a text message).
    let fragment = wire(Frame::message(
        vec![b'x'; 300],
        OpCode::Data(Data::Text),
        false,
    ));
    let (ahead, rest) = fragment.split_at(3);
    let (server, mut client) = tokio::io::duplex(1 << 16);
    let mut metered = Metered::new(server, 0.001, 1, ahead);
    let len = FrameScan::Extended {
        left: 1,
        masked: true,
        len: 1,
    };
    assert_eq!(metered.scan, len);
    client.write_all(rest).await.expect("write");
    assert_eq!(
        read_in_time(&mut metered).await.expect("the same frame"),
        rest.len()
    );
    // A second frame is over the burst of one.
    let ping = wire(Frame::ping(Vec::new()));
    client.write_all(&ping).await.expect("write");
    assert!(refused(
        read_in_time(&mut metered).await.expect_err("refused")
    ));
    // And every read after it.
    assert!(refused(
        read_in_time(&mut metered).await.expect_err("refused")
    ));

    // Too many frames in the read-ahead alone: the first read fails.
    let (server, _client) = tokio::io::duplex(64);
    let mut metered = Metered::new(server, 0.001, 1, &[ping.clone(), ping].concat());
    assert!(refused(
        read_in_time(&mut metered).await.expect_err("refused")
    ));
}
