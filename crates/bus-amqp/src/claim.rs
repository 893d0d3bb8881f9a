//! A claim on a broker namespace (an exchange and a queue prefix) by the one process that keeps
//! the store for it. In the shape where `serve` keeps its own SQLite store and RabbitMQ is the
//! bus, a second such `serve` on the same namespace would assemble the same series under other
//! local ids and corrupt jobs, verdicts and reports; it must refuse to start instead.
//!
//! The claim is an exclusive queue `<prefix>store-keeper`, which lives exactly as long as the
//! connection that declared it (the broker drops it when the holder dies, even by `kill -9`).
//! Beside it, `<prefix>store-keeper.who` (at most one message) says who holds it, so a refused
//! process can name the other one. A task keeps the claim across connection loss.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::AmqpConfig;

/// Why a claim was not had.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another process holds the namespace; `holder` is what it said of itself.
    #[error("another process keeps a store on this namespace: {holder}")]
    Held {
        /// Who, as the holder described itself (or that it said nothing).
        holder: String,
    },
    /// The broker could not be asked.
    #[error("RabbitMQ: claiming the namespace: {0}")]
    Broker(String),
}

/// A held claim; dropping it (or the process dying) lets it go.
pub struct NamespaceClaim {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for NamespaceClaim {
    fn drop(&mut self) {
        // The task closes the claim's connection, and the broker drops the exclusive queue.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// AMQP's reply code for an exclusive queue another connection holds.
const RESOURCE_LOCKED: u16 = 405;

fn names(config: &AmqpConfig) -> (String, String) {
    let lock = format!("{}store-keeper", config.queue_prefix);
    (lock.clone(), format!("{lock}.who"))
}

/// Declares the exclusive queue on a connection of its own and says who holds it; `Ok(None)`
/// when someone else does (the caller reads who).
async fn try_claim(config: &AmqpConfig, holder: &str) -> Result<Option<Connection>, ClaimError> {
    let broker = |e: lapin::Error| ClaimError::Broker(e.to_string());
    let props = ConnectionProperties::default().with_connection_name("patchbay-store-keeper".into());
    let conn = Connection::connect(&config.url, props).await.map_err(broker)?;
    let (lock, who) = names(config);
    let channel = conn.create_channel().await.map_err(broker)?;
    let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    match channel.queue_declare(lock.as_str().into(), exclusive, FieldTable::default()).await {
        Ok(_) => {}
        // RESOURCE-LOCKED (405): another connection declared it. The channel is closed by the error.
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == RESOURCE_LOCKED) => {
            let _ = conn.close(200, "claim refused".into()).await;
            return Ok(None);
        }
        // Anything else (permissions, a queue of that name with other settings) is not a holder.
        Err(e) => {
            let _ = conn.close(200, "claim failed".into()).await;
            return Err(broker(e));
        }
    }
    let mut args = crate::queue_args(config);
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    let info = conn.create_channel().await.map_err(broker)?;
    info.confirm_select(ConfirmSelectOptions::default()).await.map_err(broker)?;
    info.queue_declare(who.as_str().into(), QueueDeclareOptions::default(), args).await.map_err(broker)?;
    info.queue_purge(who.as_str().into(), QueuePurgeOptions::default()).await.map_err(broker)?;
    info.basic_publish("".into(), who.as_str().into(), BasicPublishOptions::default(), holder.as_bytes(), BasicProperties::default())
        .await
        .map_err(broker)?
        .await
        .map_err(broker)?;
    Ok(Some(conn))
}

/// What the holder of `config`'s namespace said of itself.
async fn holder(config: &AmqpConfig) -> String {
    let read = async {
        let conn = Connection::connect(&config.url, ConnectionProperties::default()).await.ok()?;
        let channel = conn.create_channel().await.ok()?;
        let (_, who) = names(config);
        // Not acked: closing the channel puts it back for the next one who asks.
        let got = channel.basic_get(who.as_str().into(), BasicGetOptions { no_ack: false }).await.ok()??;
        let text = String::from_utf8_lossy(&got.delivery.data).into_owned();
        let _ = conn.close(200, "read".into()).await;
        Some(text)
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten().unwrap_or_else(|| "it did not say who it is".into())
}

/// Claims `config`'s namespace for `holder` (a sentence naming this process), or says who has
/// it. The claim is kept across connection loss (checked every 2 s): should another process
/// take it meanwhile, that is logged as an error, and asked again a minute later, not every 2 s.
pub async fn claim(config: &AmqpConfig, holder_text: &str) -> Result<NamespaceClaim, ClaimError> {
    let Some(mut conn) = try_claim(config, holder_text).await? else {
        return Err(ClaimError::Held { holder: holder(config).await });
    };
    let (config, holder_text) = (config.clone(), holder_text.to_string());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        const CHECK: Duration = Duration::from_secs(2);
        let mut pause = CHECK;
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    let _ = conn.close(200, "claim let go".into()).await;
                    return;
                }
                () = tokio::time::sleep(pause) => {}
            }
            pause = CHECK;
            if conn.status().connected() {
                continue;
            }
            match try_claim(&config, &holder_text).await {
                Ok(Some(c)) => conn = c,
                Ok(None) => {
                    pause = Duration::from_secs(60);
                    let other = holder(&config).await;
                    tracing::error!(%other, "Another process took this namespace's store claim while the broker link was down: two stores on one namespace corrupt series, jobs and reports.");
                }
                Err(error) => tracing::warn!(%error, "Cannot renew the namespace claim; retrying."),
            }
        }
    });
    Ok(NamespaceClaim { stop: Some(stop) })
}
