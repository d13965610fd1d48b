//! The open sessions, found by connection id without hashing.
//!
//! A connection id carries the slot of its session in its low bits and a
//! connection counter above them, so a lookup is an index and one compare
//! (a hash-map lookup costs a hash and a probe, and the engine looks a
//! session up several times per message). Ids still grow with each
//! connection, and a closed connection's id never finds a later session
//! (it is compared whole).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::session::Session;
use super::ConnId;

pub(super) struct Sessions {
    /// Each session in a box of its own (see `Spare`): opening and closing
    /// one moves a pointer.
    slots: Vec<Option<(ConnId, Box<Session>)>>,
    /// Slots of closed sessions, the latest first: the next session reuses
    /// a slot still in the cache.
    free: Vec<u32>,
    len: usize,
    /// Low bits of an id that give its slot: enough for `max_sessions`.
    slot_bits: u32,
    /// Those bits set (kept: every lookup applies it).
    slot_mask: u64,
    /// Connections opened, ever.
    opened: u64,
}

impl Sessions {
    /// Room for up to `max_sessions` at once. Ids are unique for the first
    /// `2^(64 - b)` connections, `b` the bits of `max_sessions - 1`
    /// (at most 32): 2^48 with the default of 65,536 sessions.
    pub(super) fn new(max_sessions: usize) -> Self {
        let top = max_sessions.saturating_sub(1) as u64;
        let slot_bits = (u64::BITS - top.leading_zeros()).clamp(1, 32);
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            slot_bits,
            slot_mask: (1 << slot_bits) - 1,
            opened: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, conn: ConnId) -> usize {
        (conn.0 & self.slot_mask) as usize
    }

    pub(super) fn get(&self, conn: &ConnId) -> Option<&Session> {
        match self.slots.get(self.slot(*conn)) {
            Some(Some((c, s))) if c == conn => Some(&**s),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Session> {
        let slot = self.slot(*conn);
        match self.slots.get_mut(slot) {
            Some(Some((c, s))) if c == conn => Some(&mut **s),
            _ => None,
        }
    }

    pub(super) fn contains_key(&self, conn: &ConnId) -> bool {
        self.get(conn).is_some()
    }

    /// Adds a session under a new id. The caller keeps the count under
    /// `max_sessions` (past `2^32` slots, the id of a new session would not
    /// find it).
    pub(super) fn insert(&mut self, session: Box<Session>) -> ConnId {
        self.opened = self.opened.wrapping_add(1);
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let conn = ConnId(self.opened << self.slot_bits | slot as u64);
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some((conn, session));
            self.len += 1;
        }
        conn
    }

    pub(super) fn remove(&mut self, conn: &ConnId) -> Option<Box<Session>> {
        let slot = self.slot(*conn);
        let entry = self.slots.get_mut(slot)?;
        if !matches!(entry, Some((c, _)) if c == conn) {
            return None;
        }
        let (_, s) = entry.take()?;
        self.len -= 1;
        self.free.push(slot as u32);
        Some(s)
    }

    /// Gives back the slots past the last open session, and the room the
    /// slot and free lists no longer need. A slot still in use cannot move
    /// (its number is part of the session's id), so the slots freed below
    /// it stay, as holes for the next sessions.
    pub(super) fn shrink_to_fit(&mut self) {
        let used = self
            .slots
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        self.slots.truncate(used);
        self.slots.shrink_to_fit();
        self.free.retain(|&slot| (slot as usize) < used);
        self.free.shrink_to_fit();
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.slots.iter_mut().flatten().map(|(_, s)| &mut **s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::session::Spare;
    use crate::time::Instant;

    /// Ids grow, a slot is reused once freed, and an id of a closed session
    /// finds nothing, not the session now in its slot.
    #[test]
    fn ids_grow_and_a_closed_id_finds_no_later_session() {
        let mut spare = Spare::default();
        let mut open = |s: &mut Sessions| s.insert(spare.session(Instant::ZERO));
        for max in [1, 2, 3, 64, 65_536, usize::MAX] {
            let mut s = Sessions::new(max);
            let a = open(&mut s);
            let b = open(&mut s);
            assert!(a < b);
            assert_eq!(s.len(), 2);
            assert!(s.remove(&a).is_some());
            assert!(s.remove(&a).is_none(), "removed twice");
            let c = open(&mut s);
            assert!(b < c);
            assert_eq!(s.slot(a), s.slot(c), "the freed slot is reused");
            assert!(!s.contains_key(&a) && s.get_mut(&a).is_none());
            assert!(s.contains_key(&b) && s.contains_key(&c));
            assert_eq!(s.values_mut().count(), 2);
            assert!(s.remove(&ConnId(u64::MAX)).is_none());
            assert_eq!(s.len(), 2);
        }
    }

    /// Random opens, closes and shrinks, and lookups by live, closed and
    /// made-up ids, against a map: the same session or none, the same
    /// count, and the table never larger than the most sessions open at
    /// once (since the last shrink, which cuts it after the last open one).
    #[test]
    fn random_opens_and_closes_are_those_of_a_map() {
        use std::collections::HashMap;
        let mut spare = Spare::default();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for max in [1, 2, 3, 4, 5, 8, 9, 64] {
            let mut s = Sessions::new(max);
            let mut model: HashMap<ConnId, u64> = HashMap::new();
            let mut ids: std::vec::Vec<ConnId> = std::vec::Vec::new();
            let mut peak = 0;
            for k in 0..4_000u64 {
                let r = crate::xorshift(&mut rng);
                let pick = ids.get(r as usize % ids.len().max(1)).copied();
                match r >> 61 {
                    6 if r & 0xF0 == 0 => {
                        s.shrink_to_fit();
                        let top = model.keys().map(|id| s.slot(*id) + 1).max();
                        assert_eq!(s.slots.len(), top.unwrap_or(0), "cut after the last");
                        assert!(s.slots.capacity() < 2 * s.slots.len().max(4));
                        peak = s.slots.len();
                    }
                    0..=3 if model.len() < max => {
                        let id = s.insert(spare.session(Instant::from_millis(k)));
                        assert!(ids.last().is_none_or(|last| *last < id), "ids grow");
                        assert!(model.insert(id, k).is_none(), "a new id");
                        ids.push(id);
                    }
                    0..=5 => {
                        let id = pick.unwrap_or(ConnId(r));
                        let removed = s.remove(&id).map(|x| x.opened());
                        let want = model.remove(&id).map(Instant::from_millis);
                        assert_eq!(removed, want, "max {max}, step {k}");
                    }
                    _ => {
                        let id = if r & 1 == 0 {
                            pick.unwrap_or(ConnId(0))
                        } else {
                            ConnId(r)
                        };
                        let want = model.get(&id).copied().map(Instant::from_millis);
                        assert_eq!(s.get(&id).map(Session::opened), want, "max {max}");
                        assert_eq!(s.get_mut(&id).map(|x| x.opened()), want);
                    }
                }
                peak = peak.max(model.len());
                assert_eq!(s.len(), model.len());
                assert_eq!(s.values_mut().count(), model.len());
                assert_eq!(s.slots.len(), peak, "the table grows only to the peak");
                assert_eq!(s.free.len() + s.len(), s.slots.len());
            }
        }
    }
}
