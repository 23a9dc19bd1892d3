//! An application that keeps its orders in sled stores its idempotency
//! records in the same database, and commits the order and the stored
//! response in one sled transaction: a crash can never leave an order
//! without its response (a retry would place it twice) or a response
//! without its order.
//!
//! Run with `cargo run --example sled_transaction --features sled`.

use idemlog::{Bytes, Config, Error, Fingerprint, Outcome, Store};
use sled::transaction::TransactionError;
use sled::Transactional;

/// Handles `POST /orders` with an idempotency key; returns the response.
fn place_order(
    store: &Store,
    orders: &sled::Tree,
    records: &sled::Tree,
    tenant: &str,
    idempotency_key: &str,
    body: &[u8],
) -> Result<Bytes, Box<dyn std::error::Error>> {
    let key = store.key(tenant, idempotency_key)?;
    let fingerprint = Fingerprint::of_json(body)?;
    let reservation = match store.reserve(&key, &fingerprint)? {
        Outcome::Acquired(reservation) => reservation,
        Outcome::Replay(replay) => return Ok(replay.response),
        Outcome::InProgress { retry_after, .. } => {
            return Ok(format!("409 in progress, retry after {retry_after:?}").into())
        }
        Outcome::Conflict { .. } => return Ok("422 key reused with another body".into()),
    };
    // The work, once: the order and the response are written together.
    let lease = reservation.into_lease();
    let committed = (orders, records).transaction(|(orders, records)| {
        let order_id = orders.generate_id()?;
        orders.insert(&order_id.to_be_bytes(), body)?;
        let response = Bytes::from(format!("201 order {order_id}"));
        store.complete_in_sled_transaction(records, &lease, response.clone())?;
        Ok(response)
    });
    match committed {
        Ok(response) => Ok(response),
        // Another server took the key over while we worked: nothing of ours
        // was written; answer like a duplicate in flight.
        Err(TransactionError::Abort(Error::LeaseLost { .. })) => Ok("409 taken over".into()),
        Err(e) => {
            // Not cached: release so the client's retry runs again.
            let _ = store.release_lease(&lease);
            Err(e.into())
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("idemlog-sled-example-{}", std::process::id()));
    let db = sled::open(&dir)?;
    let orders = db.open_tree("orders")?;
    let records = db.open_tree("idempotency")?;
    let store = Store::with_sled_tree(records.clone(), Config::default())?;

    let body = br#"{"sku": "tea-42", "quantity": 2}"#;
    let first = place_order(&store, &orders, &records, "shop-1", "k-1", body)?;
    // The client timed out and retries; the body is the same JSON value.
    let retry = place_order(
        &store,
        &orders,
        &records,
        "shop-1",
        "k-1",
        br#"{"quantity": 2.0, "sku": "tea-42"}"#,
    )?;
    println!("first: {}", String::from_utf8_lossy(&first));
    println!("retry: {}", String::from_utf8_lossy(&retry));
    assert_eq!(first, retry);
    assert_eq!(
        orders.len(),
        1,
        "one order, however often the client retries"
    );

    drop((store, orders, records, db));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
