//! Retention: a stack keeps its last `history` releases in each environment (so `berth
//! rollback` has something to return to), never the one a new release replaces. A retired
//! release goes with its image pins, in the transaction that stores the new release.

use berth_store::Op;

use crate::keys;

/// The releases to delete when one more is stored: the oldest of `existing` (numbers, oldest
/// first) beyond `keep` counting the new one, except `from`, the release being replaced (its
/// instances still run until the new rollout is done).
pub fn retired(existing: &[u64], keep: usize, from: Option<u64>) -> Vec<u64> {
    let total = existing.len() + 1;
    if total <= keep {
        return Vec::new();
    }
    existing
        .iter()
        .take(total - keep)
        .copied()
        .filter(|n| Some(*n) != from)
        .collect()
}

/// The store operations that delete the `retired` releases of a stack in one environment,
/// each with every image pin it has.
pub fn delete_ops(stack: &str, env: &str, retired: &[u64]) -> Vec<Op> {
    retired
        .iter()
        .flat_map(|n| {
            [
                Op::delete(keys::release(stack, env, *n)),
                Op::delete_prefix(keys::release_pins(stack, env, *n)),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_history_releases_and_never_the_one_being_replaced() {
        // Room for the new one: nothing goes.
        assert_eq!(retired(&[1, 2], 3, Some(2)), Vec::<u64>::new());
        // Releases 1..=3 kept 3: storing 4 retires 1.
        assert_eq!(retired(&[1, 2, 3], 3, Some(3)), vec![1]);
        // history 1: only the new one is kept, but the one it replaces stays until done.
        assert_eq!(retired(&[1, 2, 3], 1, Some(3)), vec![1, 2]);
        assert_eq!(retired(&[4, 5], 1, Some(4)), vec![5]);
    }

    #[test]
    fn a_retired_release_goes_with_its_pins() {
        assert_eq!(
            delete_ops("shop", "staging", &[7]),
            vec![
                Op::delete("/releases/shop/staging/0000000007"),
                Op::delete_prefix("/pins/shop/staging/0000000007/"),
            ]
        );
    }
}
