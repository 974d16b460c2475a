//! Where a call runs in a cluster: the home node of what it calls, by rendezvous hashing.
//!
//! Every node computes the same answer from the same inputs with no coordination: the
//! call's placement key (the function version it resolved to) and the live nodes. Each
//! node gets a weight, a stable hash of the key and the node's id, and the heaviest node
//! is the home (highest-random-weight hashing). A node that joins takes over only the keys
//! for which it is now the heaviest, about one in n, and a node that leaves gives up only
//! its own keys, each to its runner-up: the other homes stay where they were, and with them
//! their warm instances.
//!
//! Pure: no IO, no clock. `Platform::invoke` asks it per call (see `forward`).

use model::hash::stable_hash;

/// The key a call is placed by: the function version it runs. A published version is
/// immutable, so `name:N` is its key; `$LATEST` changes with every update and its
/// instances with it, so its revision is part of its key (a deploy may move the home,
/// which costs nothing: the old instances would not be used again anyway). An alias's
/// main and canary versions are two keys and may have two homes.
pub fn key(function: &str, version: &str, revision: u64) -> String {
    if version == "$LATEST" {
        format!("{function}:$LATEST:{revision}")
    } else {
        format!("{function}:{version}")
    }
}

/// The home of `key` among `nodes` (by the id `id` reads off each): the node with the
/// highest weight, ties (which need a 64-bit collision) to the greater id. `None` without
/// nodes. The order of `nodes` does not matter.
pub fn home<'a, N>(
    key: &str,
    nodes: impl IntoIterator<Item = &'a N>,
    id: impl Fn(&N) -> &str,
) -> Option<&'a N>
where
    N: 'a + ?Sized,
{
    nodes
        .into_iter()
        .map(|n| (weight(key, id(n)), n))
        .max_by(|(wa, a), (wb, b)| wa.cmp(wb).then_with(|| id(a).cmp(id(b))))
        .map(|(_, n)| n)
}

/// The weight of `node` for `key`. FNV-1a alone mixes the last bytes it reads into the
/// high bits only weakly, and the comparison is decided by the high bits, so its value
/// goes through a finalizer (murmur3's) that spreads every input bit over all 64.
fn weight(key: &str, node: &str) -> u64 {
    let mut h = stable_hash(&[b"placement", key.as_bytes(), node.as_bytes()]);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:02}")).collect()
    }

    fn home_of<'a>(key: &str, nodes: &'a [String]) -> &'a str {
        home(key, nodes, |n| n.as_str()).expect("some node")
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| key(&format!("fn-{i}"), "$LATEST", 1))
            .collect()
    }

    #[test]
    fn keys_name_the_version_and_latest_its_revision() {
        assert_eq!(key("f", "$LATEST", 7), "f:$LATEST:7");
        assert_eq!(key("f", "3", 7), "f:3");
        assert_eq!(key("f", "3", 8), key("f", "3", 7));
        assert_ne!(key("f", "$LATEST", 8), key("f", "$LATEST", 7));
    }

    #[test]
    fn the_home_is_stable_whatever_the_order_of_the_nodes() {
        let all = nodes(5);
        let mut reversed = all.clone();
        reversed.reverse();
        for k in keys(200) {
            assert_eq!(home_of(&k, &all), home_of(&k, &reversed), "{k}");
        }
        assert_eq!(home("f", &[] as &[String], |n| n.as_str()), None);
        assert_eq!(home_of("f", &all[..1]), "node-00");
        // Fixed: nodes of two releases of Nimbus must agree on every home.
        let fixed: Vec<&str> = ["a:1", "b:$LATEST:3", "c:prod-is-not-a-key"]
            .iter()
            .map(|k| home_of(k, &all))
            .collect();
        assert_eq!(fixed, ["node-00", "node-04", "node-04"]);
    }

    #[test]
    fn keys_spread_evenly_over_the_nodes() {
        for n in [2, 3, 5, 8] {
            let all = nodes(n);
            let mut count: HashMap<&str, usize> = HashMap::new();
            let keys = keys(20_000);
            for k in &keys {
                *count.entry(home_of(k, &all)).or_default() += 1;
            }
            let fair = keys.len() / n;
            for node in &all {
                let got = count.get(node.as_str()).copied().unwrap_or(0);
                assert!(
                    got.abs_diff(fair) * 100 <= fair * 5,
                    "{n} nodes: {node} got {got} of {} keys, fair is {fair}",
                    keys.len()
                );
            }
        }
    }

    #[test]
    fn a_node_that_joins_or_leaves_moves_only_its_own_share() {
        let before = nodes(5);
        let mut after = before.clone();
        after.push("node-new".into());
        let keys = keys(20_000);
        let mut moved = 0usize;
        for k in &keys {
            let (was, is) = (home_of(k, &before), home_of(k, &after));
            if was != is {
                // Only to the new node: no key moves between the nodes that stayed.
                assert_eq!(is, "node-new", "{k}");
                moved += 1;
            }
        }
        let share = keys.len() / after.len();
        assert!(moved.abs_diff(share) * 100 <= share * 5, "{moved} moved");
        // A node that leaves gives up its keys, and only those.
        let gone = &before[2];
        let left: Vec<String> = before.iter().filter(|n| *n != gone).cloned().collect();
        for k in &keys {
            let (was, is) = (home_of(k, &before), home_of(k, &left));
            if was != gone {
                assert_eq!(was, is, "{k}");
            }
        }
    }
}
