//! `patchbay move-store`: from the embedded shape to PostgreSQL. The data directory's SQLite
//! store (migrated to this build's schema first) is copied into the empty database of
//! `store.url`: every table in one transaction, the bus log as the history, each sender's
//! sequence numbers going on (`patchbay_store_move`). Stop `serve` first; start the `run`
//! services on PostgreSQL after.

use anyhow::Context as _;
use patchbay_config::Config;

use crate::Exit;

/// Options of `patchbay move-store`.
#[derive(clap::Args)]
pub struct MoveStoreArgs {
    /// Print what was moved as JSON.
    #[arg(long)]
    pub json: bool,
    /// Move even though messages wait in the embedded queues (that work is then not done).
    #[arg(long)]
    pub drop_pending: bool,
}

/// `patchbay move-store`.
pub async fn move_store(config: &Config, args: &MoveStoreArgs) -> Result<(), Exit> {
    let Some(url) = config.store.url.as_deref() else {
        return Err(Exit::config(anyhow::anyhow!("{}: store.url is not set: name the PostgreSQL to move into", config.source_name())));
    };
    let db = config.data_dir.join(patchbay_store::DB_FILE);
    if !db.exists() {
        return Err(Exit::data(anyhow::anyhow!("no embedded store at {}: nothing to move", db.display())));
    }
    let sealer = crate::keys::sealer(config, false).map_err(Exit::config)?;
    // Opening it brings an older store to this build's schema, whose columns PostgreSQL has.
    drop(
        patchbay_store::EmbeddedBus::open(&config.data_dir, sealer.clone())
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))
            .map_err(Exit::tempfail)?,
    );
    let store = patchbay_store_pg::PgStore::connect_with(url, 4, config.store.ca.as_deref(), sealer).await.map_err(|e| {
        let e = anyhow::anyhow!("{}: store.url: {e}", config.source_name());
        if e.to_string().contains("unreachable") { Exit::tempfail(e) } else { Exit::config(e) }
    })?;
    let quiet = args.json;
    let moved = patchbay_store_move::move_store(&db, &store, args.drop_pending, |table, rows| {
        if !quiet {
            eprintln!("moved {table}: {rows}");
        }
    })
    .await
    .map_err(|e| match e {
        patchbay_store_move::MoveError::NotEmpty(_)
        | patchbay_store_move::MoveError::Shape(_)
        | patchbay_store_move::MoveError::Pending(_) => Exit::data(e),
        other => Exit::tempfail(other),
    })?;
    if args.json {
        let rows: serde_json::Map<String, serde_json::Value> = moved.rows.iter().map(|(t, n)| (t.clone(), (*n).into())).collect();
        println!("{}", serde_json::json!({ "tables": rows, "messages": moved.messages }));
    } else {
        println!(
            "moved into PostgreSQL: {} mails, {} series, {} results, {} messages of history",
            count(&moved, "mails"),
            count(&moved, "series"),
            count(&moved, "results"),
            moved.messages
        );
    }
    Ok(())
}

fn count(moved: &patchbay_store_move::Moved, table: &str) -> u64 {
    moved.rows.iter().find(|(t, _)| t == table).map_or(0, |(_, n)| *n)
}
