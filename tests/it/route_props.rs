//! Property tests of the prefix rule (src/route.rs): no path reaches one node while its first segment (dot segments resolved, percent-decoded) names another.

use crate::fuzz_checks;

use fuzz_checks::{lookup, resolve, strict_decode, NODES};
use kuzzle_gateway::data::route::route;
use proptest::prelude::*;

/// The node the path's first segment names, by the documented rule: dot segments resolved first,
/// then the first segment percent-decoded and compared whole. `None` when it names none (or the
/// path is refused).
fn first_segment_names(path: &str) -> Option<usize> {
    let resolved = resolve(path)?;
    let first = resolved[1..].split('/').next().unwrap_or("");
    lookup(&strict_decode(first)?)
}

/// `s` with the bytes chosen by `mask` percent-encoded, in upper or lower case hex.
fn encode(s: &str, mask: u64, upper: bool) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        if mask & (1 << (i % 64)) != 0 {
            out.push_str(&if upper { format!("%{b:02X}") } else { format!("%{b:02x}") });
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn node() -> impl Strategy<Value = usize> {
    0..NODES.len()
}

/// Segments that stress the rule: node names (plain, encoded, near misses), dot segments in
/// every spelling, empty segments, encoded slashes, and short random text.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        node().prop_map(|i| NODES[i].to_string()),
        (node(), any::<u64>(), any::<bool>()).prop_map(|(i, m, u)| encode(NODES[i], m, u)),
        node().prop_map(|i| format!("{}x", NODES[i])),
        node().prop_map(|i| NODES[i][..NODES[i].len() - 1].to_string()),
        prop::sample::select(vec![
            ".",
            "..",
            "%2e",
            "%2E",
            ".%2e",
            "%2e.",
            "%2e%2E",
            "...",
            "%2",
            "%",
            "",
            "%2f",
            "%2F",
            "%5c",
            "%00",
            "%+6e",
            "%e2%82%ac",
            "%ff",
            "\u{e9}",
        ])
        .prop_map(str::to_string),
        "[a-z0-9_.~%+-]{0,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..7).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// Plain segments with no dot or percent in them (the rest of a path after a prefix).
fn plain_rest() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_~-]{0,6}", 0..4).prop_map(|segs| segs.iter().map(|s| format!("/{s}")).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// The rule itself: a routed node is the one the first segment names, and a first segment that
    /// names a node routes to it.
    #[test]
    fn no_path_reaches_a_node_its_first_segment_does_not_name(p in path(), q in prop::option::of("[a-z=&%/.]{0,8}")) {
        let named = first_segment_names(&p);
        match route(&p, q.as_deref(), lookup) {
            Ok(r) => {
                prop_assert_eq!(r.node, named, "{:?} routed to {:?}, its first segment names {:?}", p, r.node.map(|i| NODES[i]), named.map(|i| NODES[i]));
            }
            Err(e) => prop_assert!(named.is_none(), "{:?} names {} but was refused: {}", p, NODES[named.unwrap_or(0)], e),
        }
    }

    /// However the name is percent-encoded, it routes to its node with the rest of the path.
    #[test]
    fn encoded_names_route_to_their_node(i in node(), mask in any::<u64>(), upper in any::<bool>(), rest in plain_rest()) {
        let p = format!("/{}{rest}", encode(NODES[i], mask, upper));
        let r = route(&p, None, lookup).expect("a valid path");
        prop_assert_eq!(r.node, Some(i));
        prop_assert_eq!(&*r.path, if rest.is_empty() { "/" } else { rest.as_str() });
    }

    /// A detour through another node's prefix and back up never keeps that node: only where the
    /// path ends up counts.
    #[test]
    fn dot_detours_do_not_switch_nodes(i in node(), j in node(), dots in prop::sample::select(vec!["..", "%2e%2e", ".%2E", "%2E."]), rest in plain_rest()) {
        let p = format!("/{}/{dots}/{}{rest}", NODES[j], NODES[i]);
        let r = route(&p, None, lookup).expect("a valid path");
        prop_assert_eq!(r.node, Some(i), "{:?}", p);
        let p = format!("/{}/./{dots}{rest}", NODES[i]);
        let r = route(&p, None, lookup).expect("a valid path");
        prop_assert_eq!(r.node, first_segment_names(&p), "{:?}", p);
    }
}
