//! How fast the parser refuses hostile stack files, the figures the unit tests of `yaml.rs` only
//! bound generously (a test must not fail because a debug build on a loaded machine is slow):
//! 50 MiB refused before parsing, 10,000-deep flow and block nesting, a billion laughs. Prints
//! the median of ten runs of each, with the goal.
//!
//! Run with `cargo bench -p berth-spec --bench hostile_inputs`.

#![expect(
    clippy::disallowed_methods,
    reason = "a benchmark: it measures wall-clock durations"
)]

use std::time::Instant;

use berth_spec::yaml::{parse, Limits};

const BILLION_LAUGHS: &str = r#"
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"#;

/// The median time in ms of ten refusals of `source`.
fn median_ms(source: &[u8]) -> f64 {
    let limits = Limits::default();
    let mut times: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let r = parse(std::hint::black_box(source), &limits);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(r.is_err(), "a hostile input was accepted");
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[4] + times[5]) / 2.0
}

fn main() {
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "50 MiB file refused before parsing",
            vec![b'['; 50 * 1024 * 1024],
            "< 100 ms",
        ),
        (
            "10,000-deep flow nesting refused",
            "[".repeat(10_000).into_bytes(),
            "< 1 s",
        ),
        (
            "10,000-deep block nesting refused",
            format!("{}x\n", "- ".repeat(10_000)).into_bytes(),
            "< 1 s",
        ),
        (
            "billion laughs refused",
            BILLION_LAUGHS.as_bytes().to_vec(),
            "< 2 s",
        ),
    ];
    for (what, source, goal) in cases {
        let ms = median_ms(&source);
        println!("spec: {what}: median {ms:.1} ms (goal {goal})");
    }
}
