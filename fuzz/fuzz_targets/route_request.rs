//! Fuzzes the router's request handling and routing table: a table and a raw HTTP/1.1 or HTTP/2
//! byte stream in (see `berth_router::fuzzing` for the input format), served by the real
//! connection handling and proxy in front of a fake instance, with the invariants checked on
//! the tables, the lookups, every answer, what the instance received, the bytes on the wire and
//! the counters afterwards. Any broken invariant panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_router::fuzzing::route_request(data);
});
