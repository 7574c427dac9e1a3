//! Control plane: the open-files limit. Raised to its hard cap at start; the default
//! `max_connections` derived from it with a reserve for node connections, health checks, ops and
//! Redis, so idle clients can never starve the gateway of the fds its checks need.

/// The soft limit on open files after raising it to the hard one (None: unknown on this system).
pub fn raise_nofile() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit { current: lim.maximum, maximum: lim.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(from = ?lim.current, to = ?lim.maximum, "open-files limit raised to its hard cap"),
            Err(e) => tracing::warn!(error = %e, limit = ?lim.current, "cannot raise the open-files limit"),
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Pipes the fast lane's splice(2) may hold at once, the whole process (2 files each): past them,
/// long bodies are copied.
pub const SPLICE_PIPES: usize = 8;

/// Files kept free for everything but client connections: node connections of in-flight requests
/// come out of the per-connection share; this covers health checks, ops, Redis, listeners, logs,
/// and the splice pipes.
pub fn reserve(nofile: u64) -> u64 {
    (nofile / 16).clamp(32, 4096) + 2 * SPLICE_PIPES as u64
}

/// How many client connections fit in `nofile` open files: each may hold a node connection too.
pub fn fitting_connections(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(reserve(nofile)) / 2).unwrap_or(usize::MAX).max(1)
}

/// The connection cap to enforce: `configured`, or (0) what fits the open-files limit. A
/// configured cap that does not fit is kept but logged: past it, accepts and checks hit EMFILE.
pub fn max_connections(configured: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return if configured == 0 { 10_000 } else { configured };
    };
    let fits = fitting_connections(nofile);
    if configured == 0 {
        return fits;
    }
    if configured > fits {
        tracing::warn!(
            max_connections = configured,
            open_files_limit = nofile,
            fits,
            "[gateway] max_connections is more than the open-files limit allows (each connection may take 2 fds, plus a reserve): raise the limit (ulimit -n, LimitNOFILE) or lower max_connections"
        );
    }
    configured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_cap_leaves_a_reserve() {
        assert_eq!(fitting_connections(1024), (1024 - 64 - 16) / 2);
        assert_eq!(fitting_connections(128), (128 - 32 - 16) / 2);
        assert_eq!(fitting_connections(1_048_576), (1_048_576 - 4096 - 16) / 2);
        assert_eq!(fitting_connections(10), 1, "never zero");
        assert_eq!(max_connections(0, Some(1024)), 472);
        assert_eq!(max_connections(100, Some(1024)), 100, "a configured cap that fits is kept");
        assert_eq!(max_connections(5000, Some(1024)), 5000, "kept (and warned about)");
    }
}
