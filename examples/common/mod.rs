//! Shared by the benchmark examples `ws_idle` and `tls_load` (`mod common;`): the `main` of a
//! single-threaded load tool, and percentiles. A directory module, so that cargo does not take it
//! for an example of its own.

use std::future::Future;
use std::process::ExitCode;

/// Run `run(args)` on a current-thread runtime. A usage error (`args` is Err) exits 2 after
/// printing it; a failure of `run` exits 1 after printing it, prefixed with `name`.
pub fn main_with<A, F>(name: &str, args: Result<A, String>, run: impl FnOnce(A) -> F) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    let args = match args {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The q-quantile (0 to 1) of sorted values, nearest rank; 0 when there are none.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted.get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0)
}
