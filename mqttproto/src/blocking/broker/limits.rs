//! How many connections fit under the process's limit on memory mappings.
//!
//! On Linux every thread the standard library starts takes four memory mappings (its stack
//! and the stack's guard page, its signal stack and that stack's guard page), and a process
//! may hold at most `/proc/sys/vm/max_map_count` of them. When a new thread finds the limit
//! reached, the standard library aborts the whole process ("failed to set up alternative stack
//! guard page") instead of failing the spawn. The broker therefore works out, when it binds,
//! how many connections the mappings left can take, and refuses connections beyond that as it
//! refuses them beyond [`BrokerConfig::max_connections`](super::BrokerConfig::max_connections).

use std::io;

/// Memory mappings of one thread started by the standard library (Linux, glibc or musl).
pub(super) const MAPPINGS_PER_THREAD: usize = 4;

/// Mappings kept out of the budget for everything but the connection threads (allocator
/// arenas, large allocations, libraries, the application's own threads): a tenth of the
/// limit, at least 2,000.
pub(super) fn reserve(max_map_count: usize) -> usize {
    (max_map_count / 10).max(2_000)
}

/// The connections that fit: the mappings left under `max_map_count`, once `mappings` (those in
/// use) and `reserve` are set aside, divided by the mappings each connection takes.
pub(super) fn connection_budget(
    max_map_count: usize,
    mappings: usize,
    per_connection: usize,
    reserve: usize,
) -> usize {
    max_map_count
        .saturating_sub(mappings)
        .saturating_sub(reserve)
        / per_connection.max(1)
}

/// A `max_map_count` whose budget takes `connections` connections (and at most one more),
/// `mappings` being in use; saturates rather than overflows.
pub(super) fn max_map_count_for(
    connections: usize,
    mappings: usize,
    per_connection: usize,
) -> usize {
    let needed = connections
        .saturating_mul(per_connection)
        .saturating_add(mappings);
    // `reserve` is the larger of 2,000 and a tenth of the limit.
    let tenth = needed.saturating_mul(10).div_ceil(9);
    let mut n = needed.saturating_add(2_000).max(tenth);
    // Settle the rounding of `reserve`, if need be.
    while n < usize::MAX && connection_budget(n, mappings, per_connection, reserve(n)) < connections
    {
        n += 1;
    }
    n
}

/// What [`measure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MapBudget {
    /// `/proc/sys/vm/max_map_count`.
    pub max_map_count: usize,
    /// Mappings in use (lines of `/proc/self/maps`), plus those of the threads the broker is
    /// about to start besides the connections' own.
    pub mappings: usize,
    pub reserve: usize,
    pub per_connection: usize,
    /// The connections that fit.
    pub connections: usize,
}

/// Reads the limit and the mappings in use, and works out the budget for connections of
/// `threads_per_connection` threads each, `other_threads` more threads (acceptors, the owner)
/// being about to start. `None` where the files cannot be read (not Linux): no limit then.
pub(super) fn measure(threads_per_connection: usize, other_threads: usize) -> Option<MapBudget> {
    let max_map_count = read_max_map_count().ok()?;
    let in_use = count_mappings().ok()?;
    let mappings = in_use + other_threads * MAPPINGS_PER_THREAD;
    let per_connection = threads_per_connection * MAPPINGS_PER_THREAD;
    let reserve = reserve(max_map_count);
    Some(MapBudget {
        max_map_count,
        mappings,
        reserve,
        per_connection,
        connections: connection_budget(max_map_count, mappings, per_connection, reserve),
    })
}

fn read_max_map_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/proc/sys/vm/max_map_count")?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One line of `/proc/self/maps` per mapping.
fn count_mappings() -> io::Result<usize> {
    let maps = std::fs::read("/proc/self/maps")?;
    Ok(maps.iter().filter(|&&b| b == b'\n').count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_what_is_left_divided_per_connection() {
        // Linux's default limit, 100 mappings in use, 8 per connection, 2,000 kept back.
        assert_eq!(connection_budget(65_530, 100, 8, 2_000), 7_928);
        // The division rounds down: a connection never gets part of its mappings.
        assert_eq!(connection_budget(1_000, 0, 8, 0), 125);
        assert_eq!(connection_budget(1_007, 0, 8, 0), 125);
        assert_eq!(connection_budget(1_008, 0, 8, 0), 126);
    }

    #[test]
    fn budget_is_zero_when_nothing_is_left() {
        assert_eq!(connection_budget(65_530, 64_000, 8, 2_000), 0);
        assert_eq!(connection_budget(65_530, 70_000, 8, 0), 0);
        assert_eq!(connection_budget(0, 0, 8, 2_000), 0);
        assert_eq!(connection_budget(2_007, 0, 8, 2_000), 0);
        assert_eq!(connection_budget(2_008, 0, 8, 2_000), 1);
    }

    #[test]
    fn zero_mappings_per_connection_does_not_divide_by_zero() {
        assert_eq!(connection_budget(10, 0, 0, 0), 10);
    }

    #[test]
    fn suggested_limit_takes_the_connections_asked_for() {
        for (connections, mappings) in [(10_000, 100), (100_000, 150), (1, 0), (0, 0), (7_500, 60)]
        {
            let n = max_map_count_for(connections, mappings, 8);
            assert!(
                connection_budget(n, mappings, 8, reserve(n)) >= connections,
                "{connections} {mappings} {n}"
            );
            // And not more than one more.
            assert!(
                connection_budget(n, mappings, 8, reserve(n)) <= connections + 1,
                "{connections} {mappings} {n}"
            );
        }
        assert_eq!(max_map_count_for(10_000, 100, 8), 89_000);
        assert_eq!(max_map_count_for(usize::MAX, 100, 8), usize::MAX);
    }

    #[test]
    fn reserve_is_a_tenth_and_at_least_2000() {
        assert_eq!(reserve(65_530), 6_553);
        assert_eq!(reserve(1_048_576), 104_857);
        assert_eq!(reserve(10_000), 2_000);
        assert_eq!(reserve(0), 2_000);
    }

    #[test]
    fn default_limit_holds_about_7300_connections_of_two_threads() {
        // What the broker computes on a default Linux (65,530) at start-up, a hundred
        // mappings in use: 8 mappings per connection, 6,553 kept back.
        let n = connection_budget(65_530, 100, 2 * MAPPINGS_PER_THREAD, reserve(65_530));
        assert_eq!(n, 7_359);
        // Where the process aborted, measured: the 8,181st connection.
        assert!(n * 8 + 100 + 6_553 <= 65_530 && n < 8_180);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn measures_this_process() {
        let b = measure(2, 1).expect("Linux has /proc");
        assert!(b.max_map_count > 0);
        assert!(b.mappings > MAPPINGS_PER_THREAD, "{b:?}");
        assert_eq!(b.per_connection, 8);
        assert_eq!(
            b.connections,
            connection_budget(b.max_map_count, b.mappings, 8, b.reserve)
        );
    }
}
