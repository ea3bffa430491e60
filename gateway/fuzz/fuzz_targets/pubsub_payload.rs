//! The Redis pub/sub payload parser: whatever arrives on a room channel. Never a panic;
//! a message it accepts is written back to the same payload and parses to the same.
#![no_main]

use chat_gateway::engine::redis::{parse_payload, Payload};
use chat_gateway::protocol::valid_traceparent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Payload::Msg {
        seq,
        epoch,
        ts,
        traceparent,
        frame,
    }) = parse_payload(data)
    {
        assert!(frame.starts_with('{'));
        assert!(traceparent.is_none_or(valid_traceparent));
        let again = format!("m {seq} {epoch} {ts} {} {frame}", traceparent.unwrap_or("-"));
        assert_eq!(
            parse_payload(again.as_bytes()),
            Some(Payload::Msg {
                seq,
                epoch,
                ts,
                traceparent,
                frame
            })
        );
    }
});
