//! Config loading from `CHATGW_*` environment variables (what a pod spec or a Secret
//! sets): never a panic, and whatever loads prints back to the same config.
#![no_main]

use chat_gateway_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // environment variables reach the loader as UTF-8 strings
    };
    // One `NAME=value` per line; names are taken after the prefix so the fuzzer spends
    // its time on key paths and values.
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("CHATGW_{k}"), v.to_string()))
        .collect();
    if let Ok(config) = Config::load(None, env) {
        let printed = config.to_yaml();
        let back = Config::from_yaml(&printed).expect("a loaded config prints back");
        assert_eq!(back, config);
    }
});
