//! `kuzzle-node-sim` binary: a thin entry point over the `kuzzle_node_sim` library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    kuzzle_node_sim::cli_main()
}
