//! Schema migrations, numbered by `PRAGMA user_version`. Each step runs once,
//! in a transaction; a database newer than this binary is refused.

use rusqlite::Connection;

use crate::StoreError;

const STEPS: &[&str] = &[
    // 1: the embedded bus.
    "
    CREATE TABLE bus_messages (
        pos   INTEGER PRIMARY KEY AUTOINCREMENT,
        id    TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        wire  BLOB NOT NULL
    );
    CREATE TABLE bus_senders (
        service  TEXT NOT NULL,
        instance TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        PRIMARY KEY (service, instance)
    ) WITHOUT ROWID;
    CREATE TABLE bus_queues (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE bus_bindings (
        queue_id INTEGER NOT NULL REFERENCES bus_queues (id),
        pattern  TEXT NOT NULL,
        PRIMARY KEY (queue_id, pattern)
    ) WITHOUT ROWID;
    CREATE TABLE bus_deliveries (
        queue_id   INTEGER NOT NULL,
        pos        INTEGER NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        not_before INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (queue_id, pos)
    ) WITHOUT ROWID;
    CREATE TABLE bus_dead_letters (
        queue_id INTEGER NOT NULL,
        pos      INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        reason   TEXT NOT NULL,
        dead_at  INTEGER NOT NULL,
        PRIMARY KEY (queue_id, pos)
    ) WITHOUT ROWID;
    CREATE TABLE bus_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO bus_meta (key, value) VALUES ('bindings_generation', 0);
    ",
    // 2: mail and series (owned by the ingest crate).
    "
    CREATE TABLE mails (
        id             INTEGER PRIMARY KEY,
        message_id     TEXT NOT NULL,
        content_hash   BLOB NOT NULL UNIQUE,
        received_at    INTEGER NOT NULL,
        date           INTEGER,
        subject        TEXT NOT NULL,
        from_name      TEXT,
        from_email     TEXT,
        kind           TEXT NOT NULL,
        problems       TEXT,
        conflicts_with INTEGER REFERENCES mails (id),
        hints          TEXT,
        raw            BLOB NOT NULL
    );
    CREATE INDEX mails_message_id ON mails (message_id);
    CREATE TABLE mail_lists (
        mail_id INTEGER NOT NULL REFERENCES mails (id),
        list_id TEXT NOT NULL,
        PRIMARY KEY (mail_id, list_id)
    ) WITHOUT ROWID;
    CREATE INDEX mail_lists_list ON mail_lists (list_id, mail_id);
    CREATE TABLE series (
        id               INTEGER PRIMARY KEY,
        project          TEXT,
        submitter        TEXT NOT NULL,
        version          INTEGER NOT NULL,
        version_explicit INTEGER NOT NULL,
        total            INTEGER NOT NULL,
        name             TEXT NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('new', 'complete', 'incomplete', 'superseded')),
        date             INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        supersedes       INTEGER REFERENCES series (id),
        superseded_by    INTEGER REFERENCES series (id)
    );
    CREATE INDEX series_markers ON series (submitter, total, version, date);
    CREATE INDEX series_open ON series (state, created_at);
    CREATE TABLE series_mails (
        series_id INTEGER NOT NULL REFERENCES series (id),
        slot      INTEGER NOT NULL,
        mail_id   INTEGER NOT NULL UNIQUE REFERENCES mails (id),
        PRIMARY KEY (series_id, slot)
    ) WITHOUT ROWID;
    CREATE TABLE series_refs (
        message_id TEXT NOT NULL,
        series_id  INTEGER NOT NULL REFERENCES series (id),
        member     INTEGER NOT NULL,
        PRIMARY KEY (message_id, series_id)
    ) WITHOUT ROWID;
    CREATE TABLE import_marks (
        source TEXT PRIMARY KEY,
        mark   TEXT NOT NULL
    ) WITHOUT ROWID;
    ",
    // 3: full test logs, deflate-compressed chunks (owned by the logs crate).
    "
    CREATE TABLE test_logs (
        job   TEXT NOT NULL,
        run   TEXT NOT NULL,
        idx   INTEGER NOT NULL,
        last  INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        at    INTEGER NOT NULL,
        data  BLOB NOT NULL,
        PRIMARY KEY (job, run, idx)
    ) WITHOUT ROWID;
    ",
    // 4: results and verdicts (owned by the results crate).
    "
    CREATE TABLE results (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL UNIQUE,
        job         TEXT NOT NULL,
        series_id   INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        project     TEXT NOT NULL,
        test        TEXT NOT NULL,
        arch        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        reason      TEXT,
        duration_ms INTEGER NOT NULL,
        base        TEXT,
        excerpt     TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,
        duplicate   INTEGER NOT NULL,
        waived      INTEGER NOT NULL DEFAULT 0,
        waiver      TEXT
    );
    CREATE INDEX results_series ON results (series_id, version, test, arch, id);
    CREATE INDEX results_test ON results (test, outcome, id);
    CREATE TABLE verdicts (
        series_id  INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        project    TEXT NOT NULL,
        verdict    TEXT,
        detail     TEXT,
        series     TEXT NOT NULL,
        since      INTEGER NOT NULL,
        decided_at INTEGER,
        PRIMARY KEY (series_id, version)
    ) WITHOUT ROWID;
    CREATE INDEX verdicts_pending ON verdicts (decided_at, since);
    ",
    // 5: reports (owned by the results crate's reporter): the intent is recorded before sending.
    "
    CREATE TABLE reports (
        series_id  INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        state      TEXT NOT NULL CHECK (state IN ('intent', 'sending', 'sent', 'failed', 'skipped')),
        transport  TEXT NOT NULL,
        detail     TEXT,
        created_at INTEGER NOT NULL,
        sent_at    INTEGER,
        PRIMARY KEY (series_id, version)
    ) WITHOUT ROWID;
    ",
    // 6: message history (owned by the history crate): one row per bus message, time monotone
    // in position, so each filter's index (which ends in the position) walks a page in time
    // order; the bodies' text and filter tokens for `contains` (FTS5, contentless: the text
    // is in bus_messages already); the topics seen, to expand patterns.
    "
    CREATE TABLE history (
        pos      INTEGER PRIMARY KEY,
        ts       INTEGER NOT NULL,
        topic    TEXT NOT NULL,
        category TEXT NOT NULL,
        service  TEXT NOT NULL,
        instance TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        series   INTEGER,
        project  TEXT
    );
    CREATE INDEX history_ts ON history (ts);
    CREATE INDEX history_topic ON history (topic);
    CREATE INDEX history_category ON history (category);
    CREATE INDEX history_series ON history (series) WHERE series IS NOT NULL;
    CREATE INDEX history_project ON history (project) WHERE project IS NOT NULL;
    CREATE INDEX history_sender ON history (service, instance, seq);
    CREATE TABLE history_topics (topic TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE VIRTUAL TABLE history_text USING fts5 (body, tags, content = '', tokenize = 'unicode61 remove_diacritics 2');
    ",
    // 7: the report mail as sent, for the dashboard, and how often an admin asked to re-send it
    // (owned by the results crate's reporter).
    "
    ALTER TABLE reports ADD COLUMN mail BLOB;
    ALTER TABLE reports ADD COLUMN resends INTEGER NOT NULL DEFAULT 0;
    ",
    // 8: history can be pruned (`history.keep_days`): the full-text table is rebuilt so that
    // its rows can be deleted by rowid (`contentless_delete`), and history is indexed again
    // from `bus_messages` by the indexer, which starts over when `history` is empty.
    "
    DROP TABLE history_text;
    CREATE VIRTUAL TABLE history_text USING fts5 (body, tags, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');
    DELETE FROM history;
    DELETE FROM history_topics;
    ",
    // 9: series found merged in their project's branch (owned by the ingest crate): a fact
    // beside the series' state, which the threading rules keep to themselves; one row per
    // series, so noticing it twice changes nothing.
    "
    CREATE TABLE series_merged (
        series_id  INTEGER PRIMARY KEY REFERENCES series (id),
        repository TEXT NOT NULL,
        branch     TEXT NOT NULL,
        commits    TEXT NOT NULL,
        merged_at  INTEGER NOT NULL
    );
    ",
    // 10: a series' public id (`uid`), the same on every store that saw the same mails: derived
    // from them by the ingest crate (`uid_key` is what it was derived from), never a local
    // counter. Series stored before keep their number, which their jobs, reports and links
    // already carry; `id` stays the local row key the series tables join on.
    "
    ALTER TABLE series ADD COLUMN uid INTEGER;
    ALTER TABLE series ADD COLUMN uid_key TEXT;
    UPDATE series SET uid = id;
    CREATE UNIQUE INDEX series_uid ON series (uid);
    ",
    // 11: when a reporter claimed a report for delivery (owned by the report crate): reporters
    // sharing PostgreSQL tell a claim being sent from one a crash left behind; same column on
    // SQLite, so a store moves whole.
    "
    ALTER TABLE reports ADD COLUMN claimed_at INTEGER;
    ",
    // 12: what a result says beyond its outcome (owned by the results crate): a failure being
    // run again (`retries`), a pass on a re-run (flaky), a failure the base shows too; and
    // re-test rounds asked on the list: a result's round, and a verdict and a report per
    // (series, version, round), the version's first testing being round 0; and the checks
    // posted to Patchwork (owned by the patchwork crate), one per (result, patch); the
    // notifications kept per rule and their digests (owned by the notify crate).
    "
    ALTER TABLE results ADD COLUMN retrying INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE results ADD COLUMN flaky INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE results ADD COLUMN pre_existing INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE results ADD COLUMN round INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE verdicts_by_round (
        series_id  INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        project    TEXT NOT NULL,
        verdict    TEXT,
        detail     TEXT,
        series     TEXT NOT NULL,
        since      INTEGER NOT NULL,
        decided_at INTEGER,
        round      INTEGER NOT NULL DEFAULT 0,
        recheck    TEXT NOT NULL DEFAULT '',
        asked_by   TEXT,
        PRIMARY KEY (series_id, version, round)
    ) WITHOUT ROWID;
    INSERT INTO verdicts_by_round (series_id, version, project, verdict, detail, series, since, decided_at)
        SELECT series_id, version, project, verdict, detail, series, since, decided_at FROM verdicts;
    DROP TABLE verdicts;
    ALTER TABLE verdicts_by_round RENAME TO verdicts;
    CREATE INDEX verdicts_pending ON verdicts (decided_at, since);
    CREATE TABLE reports_by_round (
        series_id  INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        state      TEXT NOT NULL CHECK (state IN ('intent', 'sending', 'sent', 'failed', 'skipped')),
        transport  TEXT NOT NULL,
        detail     TEXT,
        created_at INTEGER NOT NULL,
        sent_at    INTEGER,
        mail       BLOB,
        resends    INTEGER NOT NULL DEFAULT 0,
        claimed_at INTEGER,
        round      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (series_id, version, round)
    ) WITHOUT ROWID;
    INSERT INTO reports_by_round (series_id, version, message_id, state, transport, detail, created_at, sent_at, mail, resends, claimed_at)
        SELECT series_id, version, message_id, state, transport, detail, created_at, sent_at, mail, resends, claimed_at FROM reports;
    DROP TABLE reports;
    ALTER TABLE reports_by_round RENAME TO reports;
    CREATE TABLE notify_queue (
        rule         TEXT NOT NULL,
        message_id   TEXT NOT NULL,
        pos          INTEGER NOT NULL,
        sent_at      INTEGER NOT NULL,
        topic        TEXT NOT NULL,
        wire         BLOB NOT NULL,
        state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL DEFAULT 0,
        error        TEXT,
        delivered_at INTEGER,
        digest       INTEGER,
        PRIMARY KEY (rule, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX notify_waiting ON notify_queue (rule, state, pos);
    CREATE TABLE notify_digests (
        rule    TEXT NOT NULL,
        due     INTEGER NOT NULL,
        state   TEXT NOT NULL CHECK (state IN ('waiting', 'sent', 'dead')),
        events  INTEGER NOT NULL,
        sent_at INTEGER,
        next_at INTEGER NOT NULL DEFAULT 0,
        error   TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rule, due)
    ) WITHOUT ROWID;
    CREATE TABLE patchwork_checks (
        result_id    INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        patchwork_id INTEGER NOT NULL,
        posted_at    INTEGER NOT NULL,
        PRIMARY KEY (result_id, message_id)
    ) WITHOUT ROWID;
    ",
    // 13: notification rules added by admins over HTTP (owned by the notify crate), beside the
    // config file's; `rule` is the rule as written (JSON), `created_at` in unix microseconds.
    "
    CREATE TABLE notify_rules (
        name       TEXT PRIMARY KEY,
        rule       TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 14: the history by category and project together (owned by the history crate): a
    // category with a project, or without one, is counted from the index alone instead of one
    // table row per message of the category (100-109 ms at a million messages, issue 20).
    // The category's own index stays: without it the planner took this one for a series and a
    // category (1 ms became 600 ms). And a sender's messages in log order: its page (newest
    // 50) was sorted out of all its messages (66 ms at 100,000 of them, 0.1 ms from this).
    "
    CREATE INDEX history_category_project ON history (category, project);
    CREATE INDEX history_sender_order ON history (service, instance);
    ",
    // 15: how many indexed messages each topic has (owned by the history crate), kept by the
    // indexer and pruning in the same writes: a query by topics alone (a pattern, a negation)
    // sums these instead of counting every match (600,000 index entries: 72-83 ms, issue 20).
    "
    ALTER TABLE history_topics ADD COLUMN n INTEGER NOT NULL DEFAULT 0;
    UPDATE history_topics SET n = (SELECT count(*) FROM history WHERE history.topic = history_topics.topic);
    ",
];

/// Brings the database up to the latest schema.
pub fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = STEPS.len() as i64;
    if version > latest {
        return Err(StoreError::Setup(format!(
            "the database has schema version {version}, newer than this patchbay knows ({latest}); upgrade patchbay"
        )));
    }
    for (i, step) in STEPS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stored_before_public_ids_keep_their_number() {
        let mut conn = Connection::open_in_memory().unwrap();
        for step in &STEPS[..9] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
        for id in [1, 7] {
            conn.execute(
                "INSERT INTO series (id, submitter, version, version_explicit, total, name, state, date, created_at, updated_at)
                 VALUES (?1, 'a@example.org', 1, 0, 2, 'x', 'complete', 0, 0, 0)",
                [id],
            )
            .unwrap();
        }
        run(&mut conn).unwrap();
        let rows: Vec<(i64, i64, Option<String>)> = conn
            .prepare("SELECT id, uid, uid_key FROM series ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![(1, 1, None), (7, 7, None)]);
        // Public ids are unique: a second series cannot take one.
        let dup = conn.execute("UPDATE series SET uid = 1 WHERE id = 7", []);
        assert!(dup.is_err(), "{dup:?}");
        assert_eq!(conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), STEPS.len() as i64);
    }
}
