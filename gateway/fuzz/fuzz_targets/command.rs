//! The command decoder: every text frame a client can send. It must never panic, and
//! what it accepts must hold what the handlers rely on.
#![no_main]

use chat_gateway::protocol::command::{nesting_depth, salvage_id};
use chat_gateway::protocol::{Command, MAX_BODY_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // a binary or non-UTF-8 frame never reaches the decoder
    };
    let _ = salvage_id(text);
    let _ = nesting_depth(text);
    match Command::parse(text) {
        Ok(Command::Send(send)) => {
            assert!(nesting_depth(send.body.get()) <= MAX_BODY_DEPTH);
            // The body stays the raw JSON the client sent: it parses on its own.
            assert!(serde_json::from_str::<serde_json::Value>(send.body.get()).is_ok());
        }
        Ok(_) => {}
        Err(e) => assert!(!e.message.is_empty()),
    }
});
