//! The server's stateful session store (TLS 1.2 clients that resume by session ID;
//! tickets need none). rustls' `ServerSessionMemoryCache` reserves room for its
//! whole limit when it is built: about 1.1 MiB per listener at the default 16,384
//! sessions, built again on every reload, whether or not one session is ever
//! stored. This one grows with what it holds, up to the same limit, oldest out
//! first, and gives its room back once emptied.
//!
//! I/O contract: none (memory only).
#![forbid(unsafe_code)]

use rustls::server::StoresServerSessions;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
pub struct SessionCache {
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys, oldest first (a key taken out early stays until it comes to the front).
    order: VecDeque<Vec<u8>>,
}

impl SessionCache {
    /// A store of at most `limit` sessions (`limit` > 0).
    pub fn new(limit: usize) -> Arc<SessionCache> {
        Arc::new(SessionCache {
            limit: limit.max(1),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves maps that are still consistent enough
        // for a cache.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut c = self.lock();
        if c.map.insert(key.clone(), value).is_none() {
            c.order.push_back(key);
        }
        // Keys taken early linger in `order`: the loop also drops those.
        while c.map.len() > self.limit || c.order.len() > 2 * self.limit {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            c.map.remove(&old);
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().map.get(key).cloned()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut c = self.lock();
        let value = c.map.remove(key);
        if c.map.is_empty() {
            // Nothing left to age out: give the room back.
            *c = Inner::default();
        }
        value
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn holds_up_to_its_limit_oldest_out_first() {
        let c = SessionCache::new(3);
        for i in 0..5 {
            assert!(c.put(key(i), vec![i as u8]));
        }
        assert_eq!(c.get(&key(0)), None);
        assert_eq!(c.get(&key(1)), None);
        assert_eq!(c.get(&key(4)), Some(vec![4]));
        assert_eq!(c.take(&key(2)), Some(vec![2]));
        assert_eq!(c.take(&key(2)), None);
        // Replacing a value keeps the entry's age.
        c.put(key(3), vec![33]);
        c.put(key(5), vec![5]);
        c.put(key(6), vec![6]);
        assert_eq!(c.get(&key(3)), None);
        assert_eq!(c.get(&key(5)), Some(vec![5]));
        assert!(c.lock().map.len() <= 3);
    }

    #[test]
    fn starts_empty_and_gives_its_room_back() {
        let c = SessionCache::new(16 * 1024);
        assert_eq!(c.lock().map.capacity(), 0);
        for i in 0..1000 {
            c.put(key(i), vec![0; 100]);
        }
        assert!(c.lock().map.capacity() >= 1000);
        for i in 0..1000 {
            assert!(c.take(&key(i)).is_some());
        }
        let inner = c.lock();
        assert_eq!((inner.map.capacity(), inner.order.capacity()), (0, 0));
    }

    #[test]
    fn taken_keys_do_not_pile_up_in_the_age_queue() {
        let c = SessionCache::new(4);
        c.put(key(0), vec![0]);
        for i in 1..10_000 {
            c.put(key(i), vec![1]);
            c.take(&key(i));
        }
        assert!(c.lock().order.len() <= 8);
        assert_eq!(c.get(&key(0)), None, "aged out by the taken ones' turn");
    }
}
