//! Fuzzes the API's JSON bodies (register, heartbeat, deploy, plan, secrets) through the real
//! handlers of an in-process server (`berth_server::fuzzing`, whose docs give the input format):
//! never a panic, a 5xx answer or a hang.
#![no_main]

use std::sync::OnceLock;

use berth_server::fuzzing::ApiFuzzer;
use libfuzzer_sys::fuzz_target;

/// One server for the whole run: starting one per input would measure the start-up.
static API: OnceLock<std::sync::Mutex<ApiFuzzer>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let api = API.get_or_init(|| std::sync::Mutex::new(ApiFuzzer::new()));
    let api = api.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(failure) = api.run(data) {
        panic!("{failure}");
    }
});
