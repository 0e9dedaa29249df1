//! Fuzz the packet and admin decoders: arbitrary bytes must give a packet,
//! "need more" or an error, never a panic or an allocation beyond the cap.
//!
//! Run (needs cargo-fuzz and a nightly toolchain):
//! `cd gearman-core/fuzz && cargo fuzz run decode -- -max_total_time=60`
#![no_main]

use gearman_core::proto::{decode, decode_list, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Decoded::Packet(p, used)) = decode(rest, 1 << 20) {
        assert!(used >= 12 && used <= rest.len());
        assert_eq!(p.args.len(), p.kind.field_count());
        rest = &rest[used..];
    }
    let _ = decode_list(data);
});
