//! `patchbay query`: the message history from the command line (the same
//! filters as `GET /api/v1/messages`); its benchmark is `patchbay-bench history`: those
//! filters against a million stored messages.

use std::io::Write as _;

use anyhow::Context as _;
use patchbay_history::{Indexer, Query};
use patchbay_store::EmbeddedBus;

/// Options of `patchbay query`.
#[derive(clap::Args)]
pub struct QueryArgs {
    /// Filters as KEY=VALUE, the parameters of `GET /api/v1/messages`: topic, category, series,
    /// project, sender (service or service:instance), start, end, delta, contains, not_topic,
    /// not_category, not_series, not_project, not_sender, seq_from, seq_to, page, rows_per_page,
    /// order (asc|desc). Repeat a key to OR its values.
    filters: Vec<String>,
    /// Print the page as JSON (each message exactly as stored).
    #[arg(long)]
    json: bool,
}

fn now() -> i64 {
    patchbay_model::Timestamp::now().as_micros()
}

/// `patchbay query`: reads the store in the data directory (whether or not `serve` runs).
pub async fn query(config: &patchbay_config::Config, args: &QueryArgs) -> Result<(), crate::Exit> {
    let mut params = Vec::new();
    for f in &args.filters {
        let (k, v) = f.split_once('=').ok_or_else(|| crate::Exit::data(anyhow::anyhow!("{f:?}: filters are KEY=VALUE")))?;
        params.push((k.to_string(), v.to_string()));
    }
    let q = Query::from_params(&params, now()).map_err(|e| crate::Exit::data(anyhow::anyhow!(e)))?;
    let store = EmbeddedBus::open(&config.data_dir, patchbay_bus::Sealer::default())
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))
        .map_err(crate::Exit::tempfail)?;
    // What was stored while no `serve` indexed it.
    Indexer::new(store.db().clone()).catch_up().await.map_err(crate::Exit::tempfail)?;
    let shown = q.clone();
    let page = patchbay_history::HistoryStore::search(store.db(), shown).await.map_err(crate::Exit::tempfail)?;
    let mut text = String::new();
    if args.json {
        text = patchbay_history::page_json(&q, &page);
        text.push('\n');
    } else {
        for m in &page.messages {
            match patchbay_model::Envelope::from_wire(m) {
                Ok(e) => {
                    text += &crate::client::message_line(&e);
                    text.push('\n');
                }
                Err(error) => text += &format!("(unreadable message: {error})\n"),
            }
        }
    }
    // Piped into `head`, stdout may close early: that is the reader's choice, not an error.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(crate::Exit::from(anyhow::Error::from(e).context("writing to stdout")));
    }
    if args.json {
        return Ok(());
    }
    let pages = page.total.div_ceil(u64::from(q.rows_per_page));
    eprintln!("{}", page_note(page.total, q.page, pages));
    Ok(())
}

/// The note after a page of text: how many matched, and which page of how many.
fn page_note(total: u64, page: u32, pages: u64) -> String {
    match total {
        0 => "no message matches these filters".to_string(),
        _ if u64::from(page) > pages => format!("{total} message(s) match, on {pages} page(s); page {page} is past the last"),
        _ => format!("{total} message(s); page {page} of {pages}"),
    }
}
