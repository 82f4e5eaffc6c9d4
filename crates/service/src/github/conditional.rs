//! Conditional GETs (docs/github.md §2.6). The polling calls re-read the same listings every
//! pass, and for an idle repository they are the same bytes every time. GitHub answers a GET
//! that carries the `ETag` of its last answer in `If-None-Match` with `304 Not Modified`
//! when nothing changed, and a 304 does not count against the primary rate limit.
//!
//! The cache keeps, per polled URL (query included), the last `ETag` and the body it came
//! with; on a 304 the caller gets that body back, so it parses and acts exactly as before and
//! an idle pass costs nothing. Memory stays bounded: at most [`MAX_ENTRIES`] URLs and
//! [`MAX_BYTES`] of bodies, the least recently used dropped first; a body larger than
//! [`MAX_BODY`] is not kept (the next read of it is simply unconditional).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use reqwest::header::HeaderValue;

/// Most URLs remembered.
pub(super) const MAX_ENTRIES: usize = 10_000;
/// Most bytes of bodies remembered.
pub(super) const MAX_BYTES: usize = 32 * 1024 * 1024;
/// Largest body remembered.
pub(super) const MAX_BODY: usize = 1024 * 1024;

/// The last answer to one URL: what to send in `If-None-Match`, and what a 304 stands for.
#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub etag: HeaderValue,
    pub body: Bytes,
    /// The `Link` header (the next page of a cursor-paged list).
    pub link: Option<HeaderValue>,
}

struct Entry {
    cached: Cached,
    /// When it was last used: its key in `order`.
    tick: u64,
}

/// ETags and bodies by URL, least recently used dropped first.
pub(super) struct EtagCache {
    entries: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for EtagCache {
    fn default() -> Self {
        EtagCache::with_limits(MAX_ENTRIES, MAX_BYTES)
    }
}

impl EtagCache {
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        EtagCache {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// The last answer to `url`, marked as just used.
    pub fn get(&mut self, url: &str) -> Option<Cached> {
        self.tick += 1;
        let entry = self.entries.get_mut(url)?;
        self.order.remove(&entry.tick);
        entry.tick = self.tick;
        self.order.insert(self.tick, url.to_string());
        Some(entry.cached.clone())
    }

    /// Remembers the answer to `url` (replacing the last), then drops the least recently
    /// used answers until both limits hold. A body over [`MAX_BODY`] forgets the URL.
    pub fn put(&mut self, url: &str, cached: Cached) {
        self.remove(url);
        if cached.body.len() > MAX_BODY.min(self.max_bytes) {
            return;
        }
        self.tick += 1;
        self.bytes += cached.body.len();
        self.order.insert(self.tick, url.to_string());
        self.entries.insert(
            url.to_string(),
            Entry {
                cached,
                tick: self.tick,
            },
        );
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.cached.body.len();
            }
        }
    }

    /// Forgets `url` (its resource is gone, or it answered without an `ETag`).
    pub fn remove(&mut self, url: &str) {
        if let Some(e) = self.entries.remove(url) {
            self.order.remove(&e.tick);
            self.bytes -= e.cached.body.len();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The `ETag` of an answer worth remembering: present, and a valid header value.
pub(super) fn etag_of(headers: &reqwest::header::HeaderMap) -> Option<HeaderValue> {
    headers
        .get(reqwest::header::ETAG)
        .filter(|v| !v.is_empty())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(tag: &str, body: &'static [u8]) -> Cached {
        Cached {
            etag: HeaderValue::from_str(tag).expect("valid"),
            body: Bytes::from_static(body),
            link: None,
        }
    }

    #[test]
    fn an_answer_is_found_again_by_its_full_url() {
        let mut c = EtagCache::default();
        c.put("https://x/runs?status=queued", cached("\"a\"", b"{}"));
        assert_eq!(
            c.get("https://x/runs?status=queued").map(|e| e.etag),
            Some(HeaderValue::from_static("\"a\""))
        );
        assert!(c.get("https://x/runs?status=in_progress").is_none());
        c.put("https://x/runs?status=queued", cached("\"b\"", b"{\"x\":1}"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 7);
        c.remove("https://x/runs?status=queued");
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn the_least_recently_used_answer_goes_first_when_a_limit_is_reached() {
        let mut c = EtagCache::with_limits(2, 1000);
        c.put("a", cached("\"1\"", b"1"));
        c.put("b", cached("\"2\"", b"2"));
        assert!(c.get("a").is_some(), "a is now the most recently used");
        c.put("c", cached("\"3\"", b"3"));
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());

        let mut c = EtagCache::with_limits(100, 10);
        c.put("a", cached("\"1\"", b"123456"));
        c.put("b", cached("\"2\"", b"123456"));
        assert!(c.get("a").is_none(), "over the byte budget, the oldest goes");
        assert_eq!((c.len(), c.bytes()), (1, 6));
    }

    #[test]
    fn a_body_too_large_to_keep_forgets_the_url() {
        let mut c = EtagCache::with_limits(100, 4);
        c.put("a", cached("\"1\"", b"123"));
        c.put("a", cached("\"2\"", b"12345"));
        assert!(c.get("a").is_none());
        assert_eq!(c.bytes(), 0);
    }
}
