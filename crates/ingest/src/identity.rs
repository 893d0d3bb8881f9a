//! A series' public id: the same number on every store that saw the same mails, so job ids,
//! report Message-IDs, links and cancellation mean one series everywhere (two MX hosts, a
//! store rebuilt by `import`, PostgreSQL and SQLite side by side). Derived from the mails,
//! never from a local counter.
//!
//! The key is the series' *thread root*, its version, and whether it is a `RESEND`. A mail's root is the first id of its
//! `References` (else its `In-Reply-To`, else its own Message-ID): git send-email threads every
//! mail of a posting under one root (the cover letter, patch 1, or the mail `--in-reply-to`
//! names), so any member gives the same root, in any arrival order. The root is taken from the
//! member in the lowest slot ≥ 1 (the cover when there is none yet), so an unthreaded posting,
//! whose members are each their own root, has patch 1's id once it is complete. The key may
//! change while the series still lacks patches: the id in `series.series.new`, `incomplete`
//! and `mail.message.received` is provisional (patch 2/2 arriving before 1/2 announces 2/2's
//! root, and the series completes under 1/2's). It is fixed from the moment the series is
//! complete, and jobs, verdicts and reports, which all come after, carry only the fixed id.
//!
//! Two series with one key (two postings of one version in reply to one bug report) take the next id of the key's sequence: the first one seen keeps the
//! first id. That case alone depends on arrival order.

use sha2::{Digest, Sha256};

/// Public ids live in `[2^52, 2^53)`: above every local id a store has handed out before
/// (which old series keep), and exact as a JavaScript number, as the dashboard reads them.
const BASE: u64 = 1 << 52;

/// The root of a mail's thread: `References`' first id, else `In-Reply-To`, else its own.
pub fn root<'a>(message_id: &'a str, in_reply_to: &'a [String], references: &'a [String]) -> &'a str {
    references.first().or(in_reply_to.first()).map_or(message_id, String::as_str)
}

/// The member a series' key is read from: the lowest slot ≥ 1, else the cover (slot 0).
pub fn keyed_slot(slots: impl IntoIterator<Item = u32>) -> Option<u32> {
    slots.into_iter().min_by_key(|&slot| if slot == 0 { u32::MAX } else { slot })
}

/// The key a series' id is derived from: the root of its [`keyed_slot`] member, its version,
/// and whether that member is a `RESEND` (re-posted in its own thread, same version).
pub fn key(root: &str, version: u32, resend: bool) -> String {
    format!("{root}\nv{version}{}", if resend { "\nresend" } else { "" })
}

/// The `n`th id of `key`'s sequence (0 first; the next ones settle collisions).
pub fn uid(key: &str, n: u32) -> i64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    if n > 0 {
        h.update(format!("\n#{n}").as_bytes());
    }
    let d = h.finalize();
    let x = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    ((x & (BASE - 1)) | BASE) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_member_of_a_threaded_posting_has_one_root() {
        // Shallow threading under a cover, and in reply to an older version's cover.
        assert_eq!(root("<c>", &[], &[]), "<c>");
        assert_eq!(root("<p2>", &ids(&["<c>"]), &ids(&["<c>"])), "<c>");
        assert_eq!(root("<c2>", &ids(&["<c1>"]), &ids(&["<c1>"])), "<c1>");
        assert_eq!(root("<p2>", &ids(&["<c2>"]), &ids(&["<c1>", "<c2>"])), "<c1>");
        // Deep threading: each patch replies to the one before, References hold the chain.
        assert_eq!(root("<p3>", &ids(&["<p2>"]), &ids(&["<p1>", "<p2>"])), "<p1>");
        // No References header, only In-Reply-To.
        assert_eq!(root("<p2>", &ids(&["<p1>"]), &[]), "<p1>");
    }

    #[test]
    fn the_key_comes_from_the_lowest_patch_then_the_cover() {
        assert_eq!(keyed_slot([0, 3, 2]), Some(2));
        assert_eq!(keyed_slot([0]), Some(0));
        assert_eq!(keyed_slot([2, 1, 0]), Some(1));
        assert_eq!(keyed_slot([]), None);
        // The version is part of it (a v2 in reply to v1 shares v1's root), and so is a RESEND
        // (posted in reply to the original, same version).
        let keys = [key("<c1>", 1, false), key("<c1>", 2, false), key("<c1>", 1, true)];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
        assert_eq!(keys[0], "<c1>\nv1");
    }

    #[test]
    fn ids_are_stable_positive_exact_in_javascript_and_apart_from_local_ones() {
        // A fixed value (computed apart, with Python's hashlib): a changed derivation would
        // re-number every series in every store.
        assert_eq!(uid("<20240101.1@example.org>\nv1", 0), 5447385907483317);
        for (k, n) in [("a", 0), ("a", 1), ("b", 0), ("", 0), ("<x>\nv9", 7)] {
            let id = uid(k, n);
            assert!((1i64 << 52..1i64 << 53).contains(&id), "{id}");
        }
        assert_ne!(uid("a", 0), uid("a", 1));
        assert_ne!(uid("a", 1), uid("a", 2));
    }
}
