//! Answers made of objects' stored JSON (see `store::json`), sent without parsing
//! them and serializing them again: the bytes are what serializing the typed object
//! gives, so clients see the same answer as from `Json(object)`.

use api_types::List;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;

use crate::store::JsonSink;

/// One object's JSON as a 200 `application/json` answer.
pub fn json_response(bytes: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A list answer (`List<T>`: `{"apiVersion","kind","metadata","items":[...]}`) built
/// from the items' JSON, as the store hands them over.
pub struct ListBody {
    kind: &'static str,
    buf: Vec<u8>,
    empty: bool,
}

impl ListBody {
    /// A list of `kind` (e.g. `Application`); the store gives its revision, then items.
    pub fn new(kind: &'static str) -> ListBody {
        ListBody { kind, buf: Vec::new(), empty: true }
    }

    /// The finished list's bytes.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"]}");
        self.buf
    }

    /// The finished list as a 200 `application/json` answer.
    pub fn into_response(self) -> Response {
        json_response(self.into_bytes())
    }
}

impl JsonSink for ListBody {
    fn revision(&mut self, revision: u64) {
        // The envelope as `List` serializes it, up to the items: `items` is its last
        // field, so the empty list ends in `[]}`.
        let mut head = serde_json::to_vec(&List::<()>::new(self.kind, revision, Vec::new())).unwrap_or_default();
        debug_assert!(head.ends_with(b"[]}"), "List no longer ends with its items");
        head.truncate(head.len().saturating_sub(2));
        head.append(&mut self.buf);
        self.buf = head;
    }

    fn object(&mut self, json: &[u8]) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        self.buf.extend_from_slice(json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_stored_items_is_the_list_serde_writes() {
        let items = [serde_json::json!({"a": 1}), serde_json::json!({"b": [2, 3]})];
        for n in 0..=items.len() {
            let mut body = ListBody::new("Thing");
            body.revision(42);
            for item in &items[..n] {
                body.object(&serde_json::to_vec(item).unwrap());
            }
            let expected = serde_json::to_vec(&List::new("Thing", 42, items[..n].to_vec())).unwrap();
            assert_eq!(String::from_utf8(body.into_bytes()).unwrap(), String::from_utf8(expected).unwrap());
        }
    }
}
