//! The domain's words as they travel on the wire: the test every series gets and the arch any
//! runner takes. Named once here so that the dispatcher, the runner, the aggregator, the verdict
//! and the report cannot drift apart on a spelling; the strings themselves are a compatibility
//! promise (job ids, queue names and topics are built from them).

/// The name of the "does it apply?" test, dispatched for every complete series.
pub const APPLY_TEST: &str = "apply";

/// The arch of jobs any runner can take (the `apply` job); labels drop it (`apply`, not `apply/any`).
pub const ANY_ARCH: &str = "any";
