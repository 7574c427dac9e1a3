//! libFuzzer target `lane_wire`: the checks in tests/fuzz_checks/mod.rs (shared with the corpus replay test).
#![no_main]
#![forbid(unsafe_code)]

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::lane_wire(data));
