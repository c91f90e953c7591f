//! What one POST of the `http` sink carries: the body (one event, or a JSON array of
//! events) and its `Idempotency-Key`, the same for every retry of the same events.

use sha2::{Digest, Sha256};

use crate::spool::Spooled;

/// One request's body and `Idempotency-Key`, made from its events.
#[derive(Debug)]
pub(super) struct Request {
    /// The JSON body.
    pub(super) body: Vec<u8>,
    /// The `Idempotency-Key`.
    pub(super) key: String,
    /// Whether its events are replayed (`X-Metahook-Replay: 1`): a replay hands the sink
    /// batches of replayed events only.
    pub(super) replayed: bool,
}

impl Request {
    /// One event, as it is: the body is the event, the key its id.
    pub(super) fn single(event: &Spooled) -> Request {
        Request {
            key: event_id(&event.json).to_owned(),
            body: event.json.clone(),
            replayed: crate::event::is_replayed(&event.json),
        }
    }

    /// A JSON array of `events`; the key is the hex SHA-256 of their ids, one per line, so
    /// a retry of the same array carries the same key.
    pub(super) fn array(events: &[Spooled]) -> Request {
        let size = events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 1;
        let mut body = Vec::with_capacity(size);
        let mut ids = Sha256::new();
        body.push(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&event.json);
            ids.update(event_id(&event.json).as_bytes());
            ids.update(b"\n");
        }
        body.push(b']');
        Request {
            body,
            key: hex::encode(ids.finalize()),
            replayed: !events.is_empty()
                && events.iter().all(|e| crate::event::is_replayed(&e.json)),
        }
    }
}

/// An event's id ("" if the spooled bytes have none, which normalization never produces).
fn event_id(json: &[u8]) -> &str {
    serde_json::from_slice::<IdOnly<'_>>(json).map_or("", |e| e.id)
}

#[derive(serde::Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spooled(seq: u64, id: &str) -> Spooled {
        Spooled {
            seq,
            received_millis: 0,
            json: format!(r#"{{"id":"{id}","kind":"message"}}"#).into_bytes(),
        }
    }

    #[test]
    fn an_array_holds_each_event_whole_and_is_keyed_by_its_ids() {
        let events = [spooled(1, "a"), spooled(2, "b:read")];
        let request = Request::array(&events);
        let body: Vec<serde_json::Value> =
            serde_json::from_slice(&request.body).expect("a JSON array");
        assert_eq!(body.len(), 2);
        assert_eq!(body[1]["id"], "b:read");
        assert_eq!(
            request.key,
            hex::encode(Sha256::digest(b"a\nb:read\n")),
            "the key is the hash of the ids"
        );
        let single = Request::single(&events[0]);
        assert_eq!(
            (single.key.as_str(), single.body.as_slice()),
            ("a", events[0].json.as_slice())
        );
    }
}
