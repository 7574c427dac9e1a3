//! Simulated Kuzzle node (placeholder; being written).
#![forbid(unsafe_code)]
