//! A hash table that keeps its entries in itself, for the per-device state
//! of a large fleet: open addressing, linear probing over pairs of entries
//! that fill one cache line. Finding a device mostly reads that one line,
//! where a map of positions (or of pointers) reads a control byte, a slot
//! and then the entry, one after the other: three cache misses at a million
//! devices, each with its own TLB miss.
//!
//! The number of pairs need not be a power of two (the hash is reduced to it
//! by a multiplication), so the table grows by a quarter, not doubles: at
//! most 80 % full, at least 64 % after a growth, so 40 to 50 bytes per
//! 32-byte entry (and 2.25 times that for a moment while it grows). Probing
//! stops at the first free slot, and there is always one. A removal leaves
//! no marker behind: the entries after it in its run move back into the
//! gap where their probe allows (backward-shift deletion), so a lookup
//! never reads past removed entries. Removals leave the table its room,
//! for the entries to come; `shrink_to_fit`, called by the owner (see
//! `Server::shrink_to_fit`), moves the entries into the room a table made
//! for them would have and frees the rest.
//!
//! Known shortcoming: the hasher (hashbrown's foldhash, built without its
//! `std` feature) is seeded from code, stack and static addresses only, so
//! it is only as unpredictable as address-space randomisation: with that
//! off, every process hashes alike (and foldhash makes no claim against
//! chosen keys). Peers cannot insert: only enrolled devices (ids chosen by
//! the operator) get entries; an unknown id in a `Hello` is only looked up.
//!
//! How well foldhash spreads sequential ids depends on that seed. In most
//! processes they spread better than random keys would (a mean probe of
//! about 0.1 pairs at 10,000 devices), but over 60 processes of
//! `fleet_profile 10000` two had a mean probe over one pair and one of 61
//! pairs, where a lookup reads dozens of cache lines. So a table counts the
//! pairs its entries sit past their home, and once it holds 256 entries and
//! that mean passes 1.5 it is rebuilt on MurmurHash3's finalizer, where
//! any ids spread as random keys do (about 0.5 pairs), until it grows: a
//! growth (or a reservation) tries foldhash again and keeps it unless it
//! clusters at the new size (foldhash's spread also depends on the number
//! of pairs, and small tables of random keys pass 1.5 by chance). The finalizer
//! for every table removed the tail too, but it also gave up foldhash's
//! usual better spread: syncs at 1,000,000 sequential devices took about
//! 14 % longer.

use alloc::vec::Vec;
use core::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;

/// An entry of a [`Table`]: a free slot, or the entry of one key.
pub(crate) trait Entry: Clone {
    /// A free slot.
    const FREE: Self;
    /// The entry's key; `None` for a free slot.
    fn key(&self) -> Option<u64>;
    /// Asks for every cache line the entry spans, whatever it holds, so
    /// that their misses start now (see [`Table::touch_home`]), with
    /// [`prefetch`] on one of its fields per line.
    fn touch(&self);
    /// Asks for the entry's first cache line only. The default asks for
    /// every line (`touch`).
    fn touch_first(&self) {
        self.touch();
    }
    /// Asks for the lines of the entry that hold what it uses, reading the
    /// entry to know which (call it once its first line is in cache). The
    /// default asks for every line (`touch`).
    fn touch_used(&self) {
        self.touch();
    }
}

/// Asks for the cache line of `at` without waiting for it (x86-64: a
/// prefetch instruction). Elsewhere, the value is read: a load that waits,
/// but whose miss still overlaps those of the loads issued right after it.
#[inline(always)]
pub(crate) fn prefetch<T: Copy>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(at);
    #[cfg(not(target_arch = "x86_64"))]
    core::hint::black_box(*at);
}

/// Where an entry is: a pair and the entry in it.
pub(crate) type Slot = (usize, usize);

/// Two entries, aligned to a cache line (for 32-byte entries: the line).
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Pair<E>([E; 2]);

/// Fullest a table gets: `MAX_LOAD.0 / MAX_LOAD.1`.
pub(crate) const MAX_LOAD: (usize, usize) = (4, 5);
/// How full `with_capacity` makes it for the entries asked for: less than
/// `MAX_LOAD`, so that lookups probe fewer slots.
const SIZED_LOAD: (usize, usize) = (7, 10);

/// The table. See the module docs.
#[derive(Debug)]
pub(crate) struct Table<E> {
    pairs: Vec<Pair<E>>,
    len: usize,
    hash: KeyHash,
    /// The hash the table started with (foldhash), tried again at each
    /// growth of a table rebuilt on the finalizer (see `rehash_into`).
    first: KeyHash,
    /// Pairs past their home, summed over the entries (each counted where
    /// it was placed: entries move only when the table is rebuilt).
    probes: usize,
}

/// How a key's home is found.
#[derive(Clone, Copy, Debug)]
enum KeyHash {
    /// foldhash: sequential ids mostly spread better than random keys.
    Fold(DefaultHashBuilder),
    /// MurmurHash3's finalizer of the key xor a seed: any ids spread as
    /// random keys do. Taken when the first clusters (see `insert_new`), until
    /// the next growth (see `rehash_into`).
    Mix(u64),
    /// The key itself (tests: the worst clustering there is).
    #[cfg(test)]
    Plain,
}

impl KeyHash {
    // Inlined wherever a lookup is (with `report_seqs` inlined into the
    // engine, the compiler had left it a call of its own there).
    #[inline]
    fn hash(&self, key: u64) -> u64 {
        match self {
            KeyHash::Fold(hasher) => hasher.hash_one(key),
            KeyHash::Mix(seed) => mix(key ^ seed),
            #[cfg(test)]
            KeyHash::Plain => key,
        }
    }
}

/// MurmurHash3's 64-bit finalizer (`fmix64`): a bijection whose every
/// output bit depends on every input bit.
fn mix(key: u64) -> u64 {
    let mut h = key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Entries from which a table judges its spread (see `insert_new`).
const JUDGED_FROM: usize = 256;

impl<E> Default for Table<E> {
    fn default() -> Self {
        let hash = KeyHash::Fold(DefaultHashBuilder::default());
        Self {
            pairs: Vec::new(),
            len: 0,
            hash,
            first: hash,
            probes: 0,
        }
    }
}

impl<E: Entry> Table<E> {
    /// An empty table with room for `entries` entries; an empty one that
    /// grows as entries come if that much memory cannot be had (a hint too
    /// large for the address space, or for the allocator).
    pub(crate) fn with_capacity(entries: usize) -> Self {
        let mut t = Self::default();
        t.reserve(entries);
        t
    }

    /// Makes room for `additional` more entries at once, so that adding
    /// them moves no entry (a growth copies the whole table); nothing if
    /// there is room, or if that much memory cannot be had (the table then
    /// grows as entries come).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let entries = self.len.saturating_add(additional);
        if additional == 0 || pairs_for(entries, MAX_LOAD) <= self.pairs.len() {
            return;
        }
        self.try_resize(pairs_for(entries, SIZED_LOAD));
    }

    /// Gives back the room that removed entries left: moves the entries
    /// into the pairs a table made for one entry more than it holds would
    /// have (`with_capacity(len + 1)`: 70 % full, so the next insertion
    /// does not grow it at once), or frees every pair of an empty table
    /// (which then grows from nothing, as a new one does). Nothing if the
    /// table is no larger than that already, or if the new room cannot be
    /// had (it is allocated before the old is freed: for a moment the table
    /// takes both). Costs a move of every entry, as a growth does; a table
    /// whose entries cluster at the new size is rebuilt on the finalizer,
    /// as after an insertion.
    pub(crate) fn shrink_to_fit(&mut self) {
        if self.len == 0 {
            (self.pairs, self.probes, self.hash) = (Vec::new(), 0, self.first);
            return;
        }
        let pairs = pairs_for(self.len.saturating_add(1), SIZED_LOAD);
        if pairs < self.pairs.len() && self.try_resize(pairs) {
            self.respread();
        }
    }

    /// Moves the entries into `pairs` new free pairs; `false`, changing
    /// nothing, if that much memory cannot be had.
    fn try_resize(&mut self, pairs: usize) -> bool {
        let mut room = Vec::new();
        if room.try_reserve_exact(pairs).is_err() {
            return false;
        }
        room.resize(pairs, Pair([E::FREE, E::FREE]));
        self.rehash_into(room);
        true
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Number of slots, free ones included.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.pairs.len() * 2
    }

    /// The pair where the search for `key` starts.
    pub(crate) fn home(&self, key: u64) -> usize {
        let h = self.hash.hash(key);
        ((u128::from(h) * self.pairs.len() as u128) >> 64) as usize
    }

    /// Reads every cache line of the pair where the search for `key`
    /// starts, without looking at what they hold: no load waits for another,
    /// so at a million devices the misses of several tables touched one
    /// after the other overlap, where a lookup's reads of an entry's later
    /// lines wait for its key to compare. `key`'s entry is in that pair
    /// unless its home was full when it came (then this is only a hint).
    pub(crate) fn touch_home(&self, key: u64) {
        if let Some(pair) = self.pairs.get(self.home(key)) {
            pair.0.iter().for_each(E::touch);
        }
    }

    /// The first half of a hint in two steps: asks for the first cache line
    /// of `key`'s home pair, which holds its first entry's key (for entries
    /// laid out so) and nothing else.
    pub(crate) fn touch_home_first(&self, key: u64) {
        if let Some([first, _]) = self.pairs.get(self.home(key)).map(|p| &p.0) {
            first.touch_first();
        }
    }

    /// The second half, once the first line has come: reads the home pair's
    /// first key and asks for the lines of the entry that holds `key`: the
    /// first if that key is `key`, else the second (if `key` is past its
    /// home pair, a lookup reads it as usual; this was only a hint).
    pub(crate) fn touch_home_entry(&self, key: u64) {
        if let Some([first, second]) = self.pairs.get(self.home(key)).map(|p| &p.0) {
            if first.key() == Some(key) {
                first.touch_used();
            } else {
                second.touch();
            }
        }
    }

    /// The slot of `key`'s entry, or the free slot where it would go.
    fn probe(&self, key: u64) -> Result<Slot, Slot> {
        let (n, mut at) = (self.pairs.len(), self.home(key));
        // At most every pair once; there is always a free slot (see `insert_new`).
        for _ in 0..n {
            let Some(pair) = self.pairs.get(at) else {
                break;
            };
            for (k, e) in pair.0.iter().enumerate() {
                match e.key() {
                    None => return Err((at, k)),
                    Some(found) if found == key => return Ok((at, k)),
                    Some(_) => {}
                }
            }
            at += 1;
            if at == n {
                at = 0;
            }
        }
        Err((n, 0))
    }

    /// Where `key`'s entry is.
    pub(crate) fn find(&self, key: u64) -> Option<Slot> {
        self.probe(key).ok()
    }

    /// The entry at `slot`.
    pub(crate) fn at(&self, (pair, k): Slot) -> Option<&E> {
        self.pairs.get(pair).and_then(|p| p.0.get(k))
    }

    /// The entry at `slot`, to change (its key must stay).
    pub(crate) fn at_mut(&mut self, (pair, k): Slot) -> Option<&mut E> {
        self.pairs.get_mut(pair).and_then(|p| p.0.get_mut(k))
    }

    /// `key`'s entry.
    pub(crate) fn get(&self, key: u64) -> Option<&E> {
        self.find(key).and_then(|at| self.at(at))
    }

    /// `key`'s entry, to change (its key must stay).
    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut E> {
        self.find(key).and_then(|at| self.at_mut(at))
    }

    /// Adds `entry`, whose key is not in the table yet (callers look it up
    /// first; else, or for a free entry, nothing is added).
    pub(crate) fn insert_new(&mut self, entry: E) {
        if entry.key().is_none() {
            return;
        }
        if pairs_for(self.len + 1, MAX_LOAD) > self.pairs.len() {
            let grown = self.pairs.len().saturating_add(self.pairs.len() / 4);
            self.resize(grown.max(pairs_for(self.len + 1, SIZED_LOAD)));
        }
        if self.place(entry) {
            self.len += 1;
        }
        self.respread();
    }

    /// Rebuilds the table on the finalizer if its entries cluster under its
    /// hash (see `clustered`), unless it is on the finalizer already.
    fn respread(&mut self) {
        // foldhash's spread of sequential ids depends on its seed, drawn
        // per process: mostly a mean probe of about 0.1 pairs, but in about
        // one process in 30 over a pair, and once 61 pairs (dozens of cache
        // lines per lookup). Random keys average under 0.9 pairs up to the
        // fullest this table gets, so past 1.5 the table is rebuilt on
        // the finalizer, where any ids spread as random keys do. (The
        // finalizer for every table cost about 14 % at 1,000,000
        // sequential devices: it gives up foldhash's usual better spread.)
        // Whether foldhash clusters also depends on the number of pairs: a
        // table rebuilt at one size tries foldhash again when it grows (see
        // `rehash_into`).
        if self.clustered() && !matches!(self.hash, KeyHash::Mix(_)) {
            self.hash = KeyHash::Mix(self.first.hash(0x6d64_6d2d_7379_6e63));
            let room = alloc::vec![Pair([E::FREE, E::FREE]); self.pairs.len()];
            let old = core::mem::replace(&mut self.pairs, room);
            self.place_all(old.into_iter().flat_map(|p| p.0), false);
        }
    }

    /// Puts `entry` in the first free slot of its probe sequence; `false`
    /// if it is free itself or its key is already there (neither happens).
    fn place(&mut self, entry: E) -> bool {
        let Some(key) = entry.key() else { return false };
        let Err(at) = self.probe(key) else {
            return false;
        };
        let Some(slot) = self.at_mut(at) else {
            return false;
        };
        *slot = entry;
        self.probes += self.past(at.0, self.home(key));
        true
    }

    /// Removes `key`'s entry and returns it. The entries after it in its
    /// run of occupied slots move back where their probe sequence allows,
    /// so every key stays reachable from its home without passing a free
    /// slot.
    pub(crate) fn remove(&mut self, key: u64) -> Option<E> {
        let (pair, k) = self.find(key)?;
        let slots = self.pairs.len() * 2;
        let mut hole = pair * 2 + k;
        let removed = core::mem::replace(self.slot_mut(hole)?, E::FREE);
        self.len = self.len.saturating_sub(1);
        self.probes = self.probes.saturating_sub(self.past(pair, self.home(key)));
        let mut at = hole;
        // A run ends at a free slot, and there is always one.
        for _ in 1..slots {
            at = (at + 1) % slots;
            let Some(moved) = self.slot_mut(at).and_then(|e| e.key()) else {
                break;
            };
            let home = self.home(moved);
            // Movable into the hole unless its home lies after the hole
            // (cyclically, up to `at`): a probe starting there would never
            // reach the hole.
            let from_home = (at + slots - home * 2) % slots;
            let from_hole = (at + slots - hole) % slots;
            if from_hole <= from_home {
                let entry = core::mem::replace(self.slot_mut(at)?, E::FREE);
                let (from, to) = (self.past(at / 2, home), self.past(hole / 2, home));
                self.probes = self.probes.saturating_sub(from) + to;
                *self.slot_mut(hole)? = entry;
                hole = at;
            }
        }
        Some(removed)
    }

    /// Pairs that an entry at pair `pair` sits past its home pair `home`.
    fn past(&self, pair: usize, home: usize) -> usize {
        let n = self.pairs.len();
        (pair + n - home) % n.max(1)
    }

    /// Pairs that `key`'s entry sits past its home; `None` if it is absent.
    #[cfg(test)]
    fn past_home(&self, key: u64) -> Option<usize> {
        Some(self.past(self.find(key)?.0, self.home(key)))
    }

    /// The pairs every entry sits past its home, counted afresh (what the
    /// running `probes` must be).
    #[cfg(test)]
    fn probes_recounted(&self) -> usize {
        let keys = self.iter().filter_map(Entry::key);
        keys.map(|k| self.past_home(k).expect("every entry found"))
            .sum()
    }

    /// The slot with flat index `slot` (pair `slot / 2`, entry `slot % 2`).
    fn slot_mut(&mut self, slot: usize) -> Option<&mut E> {
        self.at_mut((slot / 2, slot % 2))
    }

    fn resize(&mut self, pairs: usize) {
        let free = Pair([E::FREE, E::FREE]);
        self.rehash_into(alloc::vec![free; pairs]);
    }

    /// Whether the entries sit a mean of more than 1.5 pairs past their
    /// home, in a table large enough to judge (see `insert_new`). Known
    /// shortcoming: a cluster of a few entries stays under that mean and is
    /// not rebuilt (`a_local_cluster_under_the_mean_is_rebuilt`, ignored).
    fn clustered(&self) -> bool {
        self.len >= JUDGED_FROM && self.probes > self.len + self.len / 2
    }

    /// Moves every entry into `room`, free pairs that become the table (a
    /// growth or a reservation). A table on the finalizer first tries its
    /// first hash again: foldhash's spread of sequential ids depends on the
    /// number of pairs as well as on its seed (over 1.5 pairs at some sizes
    /// between 256 and 64,000 entries in about a third of processes, under
    /// 0.7 at the sizes after), and random keys pass 1.5 by chance in a few
    /// tables out of a hundred below 4,000 entries, so a rebuild at one size
    /// says little about the next. The try stops as soon as the entries
    /// placed cluster, so it costs at most one more move of the entries; a
    /// table whose first hash clusters again as it fills is then rebuilt
    /// again, one more move per growth at most.
    fn rehash_into(&mut self, room: Vec<Pair<E>>) {
        let old = core::mem::replace(&mut self.pairs, room);
        if let KeyHash::Mix(_) = self.hash {
            let mixed = core::mem::replace(&mut self.hash, self.first);
            if self.place_all(old.iter().flat_map(|p| &p.0).cloned(), true) {
                return;
            }
            self.hash = mixed;
            self.pairs.fill(Pair([E::FREE, E::FREE]));
        }
        self.place_all(old.into_iter().flat_map(|p| p.0), false);
    }

    /// Places `entries` in the table, whose pairs are all free, counting
    /// their probes afresh. With `judge`, stops as soon as they cluster (see
    /// `clustered`; the table's `len` counts them all) and returns `false`.
    fn place_all(&mut self, entries: impl Iterator<Item = E>, judge: bool) -> bool {
        self.probes = 0;
        for entry in entries {
            self.place(entry);
            if judge && self.clustered() {
                return false;
            }
        }
        true
    }

    /// Every entry.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &E> {
        let entries = self.pairs.iter().flat_map(|p| &p.0);
        entries.filter(|e| e.key().is_some())
    }
}

/// Pairs for `entries` entries at load `load`, with at least one free slot.
fn pairs_for(entries: usize, load: (usize, usize)) -> usize {
    let slots = entries.saturating_mul(load.1).div_ceil(load.0);
    slots.max(entries.saturating_add(1)).div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ops::AddAssign;

    #[derive(Clone, Debug, PartialEq)]
    struct E(Option<u64>);

    impl Entry for E {
        const FREE: E = E(None);
        fn key(&self) -> Option<u64> {
            self.0
        }
        fn touch(&self) {
            prefetch(&self.0);
        }
    }

    /// An entry with a value.
    #[derive(Clone, Debug, PartialEq)]
    struct V(Option<u64>, u64);

    impl Entry for V {
        const FREE: V = V(None, 0);
        fn key(&self) -> Option<u64> {
            self.0
        }
        fn touch(&self) {
            prefetch(&self.1);
        }
    }

    /// Every key of `keys` found with its value (`value(key)`), the count
    /// right, no key twice, and the running probe count the real one.
    fn holds_exactly(t: &Table<V>, keys: &[u64], value: impl Fn(u64) -> u64) {
        assert_eq!((t.len(), t.iter().count()), (keys.len(), keys.len()));
        for &k in keys {
            assert_eq!(t.get(k), Some(&V(Some(k), value(k))), "key {k}");
        }
        let mut seen: Vec<u64> = t.iter().map(|e| e.0.unwrap()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), keys.len(), "a key twice");
        assert_eq!(t.probes, t.probes_recounted());
    }

    /// After most entries are removed, a shrink moves the rest into the
    /// room `with_capacity(len + 1)` would make (70 % full), frees the
    /// rest, and keeps every key with its value; lookups, changes and
    /// removals work after it, the next insertion does not grow it, and it
    /// grows again as entries come, keeping them all.
    #[test]
    fn a_shrunk_table_keeps_its_entries_and_grows_again() {
        for (total, kept_every) in [(20_000u64, 10u64), (5_000, 3), (300, 7), (10, 5)] {
            let value = |k: u64| k.wrapping_mul(3) ^ 0x55;
            let mut t = Table::<V>::default();
            (0..total).for_each(|k| t.insert_new(V(Some(k), value(k))));
            let grown = t.slots();
            for k in (0..total).filter(|k| k % kept_every != 0) {
                assert_eq!(t.remove(k), Some(V(Some(k), value(k))));
            }
            let mut kept: Vec<u64> = (0..total).step_by(kept_every as usize).collect();
            assert_eq!(t.slots(), grown, "removals keep the room");
            t.shrink_to_fit();
            let pairs = pairs_for(kept.len() + 1, SIZED_LOAD);
            assert_eq!(t.slots(), pairs * 2, "{total}");
            assert!(t.slots() < grown, "{total}: {} of {grown}", t.slots());
            holds_exactly(&t, &kept, value);
            assert!((0..total)
                .filter(|k| k % kept_every != 0)
                .all(|k| t.get(k).is_none()));
            // The next insertion fits without a growth.
            t.insert_new(V(Some(total), value(total)));
            kept.push(total);
            assert_eq!(t.slots(), pairs * 2, "{total}: grew at once");
            // Changes and removals.
            for k in kept.iter().step_by(2) {
                t.get_mut(*k).unwrap().1 = value(*k) + 1;
            }
            let changed =
                |k: u64| value(k) + u64::from(kept.iter().position(|x| *x == k).unwrap() % 2 == 0);
            holds_exactly(&t, &kept, changed);
            let gone: Vec<u64> = kept.iter().copied().skip(1).step_by(3).collect();
            for k in &gone {
                assert_eq!(t.remove(*k), Some(V(Some(*k), changed(*k))));
                assert_eq!(t.get(*k), None);
            }
            let rest: Vec<u64> = kept.iter().copied().filter(|k| !gone.contains(k)).collect();
            holds_exactly(&t, &rest, changed);
            // Grown again, past its size before the shrink.
            let more: Vec<u64> = (total + 1..3 * total).collect();
            more.iter()
                .for_each(|k| t.insert_new(V(Some(*k), value(*k))));
            assert!(t.slots() > pairs * 2);
            let all: Vec<u64> = rest.iter().chain(&more).copied().collect();
            holds_exactly(&t, &all, |k| if k > total { value(k) } else { changed(k) });
        }
    }

    /// A shrink of an empty table frees every pair (a new table has none),
    /// whether it never had entries or they were all removed; the table
    /// then takes entries as a new one does.
    #[test]
    fn a_shrunk_empty_table_has_no_room_and_works() {
        let mut t = Table::<V>::default();
        t.shrink_to_fit();
        assert_eq!((t.len(), t.slots(), t.get(0)), (0, 0, None));
        (0..1000u64).for_each(|k| t.insert_new(V(Some(k), k)));
        (0..1000u64).for_each(|k| assert_eq!(t.remove(k), Some(V(Some(k), k))));
        assert!(t.slots() > 1000);
        t.shrink_to_fit();
        assert_eq!((t.len(), t.slots(), t.probes), (0, 0, 0));
        t.touch_home(3);
        assert_eq!(t.get(3), None);
        assert_eq!(t.remove(3), None);
        let keys: Vec<u64> = (5000..5100).collect();
        keys.iter().for_each(|k| t.insert_new(V(Some(*k), *k)));
        holds_exactly(&t, &keys, |k| k);
    }

    /// A table no larger than a shrink would make it is left alone, the
    /// entries where they were: a table that grew as entries came and is
    /// 70 % full or more (it is 64 to 80 %; one under 70 % shrinks a
    /// little), and any table just shrunk.
    #[test]
    fn a_shrink_of_a_table_at_its_size_changes_nothing() {
        let at = |t: &Table<V>| {
            t.pairs
                .iter()
                .map(|p| [p.0[0].0, p.0[1].0])
                .collect::<Vec<_>>()
        };
        let mut full = 0;
        for n in (1u64..3000).step_by(7).chain([1, 2, 3, 30_000]) {
            let mut t = Table::<V>::default();
            (0..n).for_each(|k| t.insert_new(V(Some(k), k)));
            let before = at(&t);
            t.shrink_to_fit();
            if n * 10 >= before.len() as u64 * 2 * 7 {
                assert_eq!(at(&t), before, "{n}: a table 70 % full moved");
                full += 1;
            }
            assert!(t.slots() <= before.len() * 2);
            let once = at(&t);
            t.shrink_to_fit();
            assert_eq!(at(&t), once, "{n}: a second shrink moved entries");
            let mut t = Table::<V>::with_capacity(4 * n as usize);
            (0..n).for_each(|k| t.insert_new(V(Some(k), k)));
            let reserved = t.slots();
            t.shrink_to_fit();
            let once = at(&t);
            assert!(once.len() * 2 < reserved, "{n}: no smaller");
            t.shrink_to_fit();
            assert_eq!(at(&t), once, "{n}: a second shrink moved entries");
        }
        assert!(full > 100, "{full} tables 70 % full");
    }

    /// A table whose hash clusters its remaining entries at the smaller
    /// size is rebuilt on the finalizer by the shrink, as after an
    /// insertion: keys spaced 2^64 / 20,000 apart under the key as its own
    /// hash spread one or two to a pair in a table of 20,000 (as the
    /// `a_table_rebuilt_at_one_size...` test shows), but the first 2,000 of
    /// them, all that stay, have their homes in the first tenth of the
    /// table shrunk to 2,000 entries. Without the rebuild they would sit
    /// hundreds of pairs past their homes.
    #[test]
    fn a_shrink_that_clusters_the_entries_rebuilds_on_the_finalizer() {
        const KEYS: u64 = 20_000;
        let spacing = u64::MAX / KEYS;
        let mut t = Table::<V> {
            hash: KeyHash::Plain,
            first: KeyHash::Plain,
            ..Table::default()
        };
        (0..KEYS).for_each(|i| t.insert_new(V(Some(i * spacing), i)));
        assert!(matches!(t.hash, KeyHash::Plain), "spread at full size");
        (KEYS / 10..KEYS).for_each(|i| assert!(t.remove(i * spacing).is_some()));
        t.shrink_to_fit();
        assert!(
            matches!(t.hash, KeyHash::Mix(_)),
            "rebuilt on the finalizer"
        );
        let kept: Vec<u64> = (0..KEYS / 10).map(|i| i * spacing).collect();
        holds_exactly(&t, &kept, |k| k / spacing);
        assert!(
            t.probes < t.len(),
            "mean probe {}",
            t.probes as f64 / t.len() as f64
        );
    }

    /// Growth from empty keeps every entry, never fills the table past
    /// `MAX_LOAD` and never leaves it below 64 % full (past a few entries).
    #[test]
    fn grows_by_a_quarter_and_keeps_everything() {
        let mut t = Table::<E>::default();
        // Hints, also on a table without pairs.
        t.touch_home(7);
        t.touch_home_first(7);
        t.touch_home_entry(7);
        assert_eq!((t.len(), t.get(7), t.iter().count()), (0, None, 0));
        for k in 0..5000u64 {
            t.insert_new(E(Some(k * 7)));
            assert!(t.len() * MAX_LOAD.1 <= t.slots() * MAX_LOAD.0);
            assert!(
                t.slots() * 2 <= (t.len() * 5 / 4 + 2) * 3 + 4,
                "{}",
                t.slots()
            );
        }
        t.insert_new(E::FREE); // not an entry: not added
        assert_eq!(t.len(), 5000);
        assert!((0..5000u64).all(|k| t.get(k * 7) == Some(&E(Some(k * 7)))));
        assert!((0..5000u64).all(|k| t.get(k * 7 + 1).is_none()));
        assert_eq!(t.iter().count(), 5000);
    }

    /// The second step of a two-step hint asks for the entry that holds the
    /// key, whichever of its home pair's two it is, and only for it; for a
    /// key past its home pair or absent, for the pair's second entry (a
    /// guess: a lookup then reads on as usual). The first step asks for the
    /// pair's first entry only.
    #[test]
    fn the_second_hint_asks_for_the_entry_holding_the_key() {
        std::thread_local! {
            static TOUCHED: core::cell::RefCell<Vec<Option<u64>>> = const {
                core::cell::RefCell::new(Vec::new())
            };
        }
        #[derive(Clone, Debug, PartialEq)]
        struct T(Option<u64>);
        impl Entry for T {
            const FREE: T = T(None);
            fn key(&self) -> Option<u64> {
                self.0
            }
            fn touch(&self) {
                TOUCHED.with(|t| t.borrow_mut().push(self.0));
            }
        }
        let touched = |hint: &dyn Fn()| {
            TOUCHED.with(|t| t.borrow_mut().clear());
            hint();
            TOUCHED.with(|t| t.take())
        };
        let mut t = Table::<T>::default();
        (0..3000u64).for_each(|k| t.insert_new(T(Some(k * 3))));
        let (mut first, mut second, mut past) = (0, 0, 0);
        for k in (0..3000u64).map(|k| k * 3).chain([1, 2, u64::MAX]) {
            let pair = &t.pairs[t.home(k)].0;
            let wanted = match t.find(k) {
                Some((at, i)) if at == t.home(k) => {
                    [&mut first, &mut second][i].add_assign(1);
                    Some(k)
                }
                _ => {
                    past += 1;
                    pair[1].0
                }
            };
            assert_eq!(touched(&|| t.touch_home_entry(k)), [wanted], "key {k}");
            assert_eq!(touched(&|| t.touch_home_first(k)), [pair[0].0], "key {k}");
        }
        // Each case came up.
        assert!(
            first > 100 && second > 100 && past > 10,
            "{first} {second} {past}"
        );
    }

    /// Reserved room takes that many more entries without a growth, keeps
    /// every entry already there, and an impossible reservation changes
    /// nothing.
    #[test]
    fn reserved_room_takes_its_entries_without_growing() {
        let mut t = Table::<E>::default();
        (0..100u64).for_each(|k| t.insert_new(E(Some(k))));
        t.reserve(10_000);
        let slots = t.slots();
        assert!((0..100u64).all(|k| t.get(k) == Some(&E(Some(k)))));
        (100..10_100u64).for_each(|k| t.insert_new(E(Some(k))));
        assert_eq!(t.slots(), slots, "no growth for the reserved entries");
        assert!((0..10_100u64).all(|k| t.get(k) == Some(&E(Some(k)))));
        t.reserve(0);
        t.reserve(1);
        for huge in [usize::MAX, usize::MAX / 64, 1 << 56] {
            t.reserve(huge);
            assert_eq!((t.len(), t.slots()), (10_100, slots));
        }
        assert!((0..10_100u64).all(|k| t.get(k) == Some(&E(Some(k)))));
    }

    /// A table whose hash clusters (here the key itself, sequential keys all
    /// landing in the first pairs) is rebuilt on the finalizer when it
    /// judges its spread: every entry is kept and found, and the mean probe
    /// drops under a pair (from thousands). A table whose first hash
    /// clusters at every size stays on the finalizer through its growths
    /// (each tries the first hash again and gives up once it clusters).
    #[test]
    fn a_clustering_table_is_rebuilt_on_the_finalizer() {
        let mut t = Table::<E> {
            hash: KeyHash::Plain,
            first: KeyHash::Plain,
            ..Table::default()
        };
        for k in 0..JUDGED_FROM as u64 - 1 {
            t.insert_new(E(Some(k)));
        }
        assert!(
            matches!(t.hash, KeyHash::Plain),
            "not judged before {JUDGED_FROM}"
        );
        for k in JUDGED_FROM as u64 - 1..20_000 {
            t.insert_new(E(Some(k)));
        }
        assert!(matches!(t.hash, KeyHash::Mix(_)));
        assert!((0..20_000u64).all(|k| t.get(k) == Some(&E(Some(k)))));
        assert_eq!((t.len(), t.iter().count()), (20_000, 20_000));
        assert_eq!(
            t.probes_recounted(),
            t.probes,
            "the running count is the real one"
        );
        assert!(
            t.probes < t.len(),
            "mean probe {}",
            t.probes as f64 / 20_000.0
        );
    }

    /// Removals in the worst clustering (the key as its own hash, keys
    /// chosen to land in the last pairs, so their runs wrap past the last
    /// slot to the first), on a table kept small (under 256 entries, so
    /// never rebuilt): after every removal and insertion every key is found,
    /// no removed key is, and the running probe count is the one counted
    /// afresh.
    #[test]
    fn removals_in_wrapping_clusters_keep_every_key() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for size in [1usize, 2, 5, 16, 40] {
            let mut t = Table::<E> {
                hash: KeyHash::Plain,
                first: KeyHash::Plain,
                ..Table::with_capacity(size)
            };
            let mut model = std::collections::BTreeSet::new();
            for step in 0..1500 {
                // Homes in the last pair or two, or the first: runs wrap.
                let key = match next() % 3 {
                    0 => u64::MAX - next() % 64,
                    1 => next() % 64,
                    _ => u64::MAX - (next() % (u64::MAX / 8)),
                };
                if model.contains(&key) {
                    assert_eq!(t.remove(key), Some(E(Some(key))), "step {step}");
                    model.remove(&key);
                } else if model.len() < 200 {
                    t.insert_new(E(Some(key)));
                    model.insert(key);
                }
                let probes: usize = model
                    .iter()
                    .map(|k| {
                        t.past_home(*k)
                            .unwrap_or_else(|| panic!("{k} lost at {step}"))
                    })
                    .sum();
                assert_eq!(t.probes, probes, "step {step}");
                assert_eq!((t.len(), t.iter().count()), (model.len(), model.len()));
                assert!(matches!(t.hash, KeyHash::Plain));
            }
        }
    }

    /// Clustering that passes: keys spaced 2^64 / 20,000 apart, inserted in
    /// order, under a hash that is the key itself. While the table is small
    /// the keys inserted so far all have their home in its first pairs (a
    /// cluster, as foldhash makes of sequential ids at some sizes only),
    /// and the table is rebuilt on the finalizer; at 20,000 entries the same
    /// hash spreads them one or two to a pair (home `i * pairs / 20,000`
    /// for the `i`th key), better than the finalizer (about 0.5 pairs
    /// mean, as random keys). Before the fix the rebuild was for good and
    /// the table ended on the finalizer; now a growth tries the first hash
    /// again and keeps it. Every entry is found and the running probe count
    /// is exact throughout; and a table that clusters at every size stays
    /// on the finalizer (`a_clustering_table_is_rebuilt_on_the_finalizer`).
    #[test]
    fn a_table_rebuilt_at_one_size_goes_back_to_its_hash_when_that_spreads() {
        const KEYS: u64 = 20_000;
        let spacing = u64::MAX / KEYS;
        let mut t = Table::<E> {
            hash: KeyHash::Plain,
            first: KeyHash::Plain,
            ..Table::default()
        };
        let mut rebuilt = false;
        let exact = |t: &Table<E>, upto: u64| {
            let probes: usize = (0..upto).map(|i| t.past_home(i * spacing).unwrap()).sum();
            assert_eq!(probes, t.probes, "running probe count at {upto}");
        };
        let mut slots = 0;
        for i in 0..KEYS {
            t.insert_new(E(Some(i * spacing)));
            rebuilt |= matches!(t.hash, KeyHash::Mix(_));
            if t.slots() != slots {
                slots = t.slots();
                exact(&t, i + 1);
            }
        }
        assert!(rebuilt, "the small table clustered and was rebuilt");
        assert!((0..KEYS).all(|i| t.get(i * spacing) == Some(&E(Some(i * spacing)))));
        assert_eq!((t.len(), t.iter().count()), (KEYS as usize, KEYS as usize));
        exact(&t, KEYS);
        assert!(
            matches!(t.hash, KeyHash::Plain),
            "back on the hash that spreads these keys"
        );
        assert!(
            t.probes * 10 < t.len(),
            "mean probe {}",
            t.probes as f64 / KEYS as f64
        );
    }

    /// Known shortcoming, not fixed: the rebuild is judged on the mean
    /// displacement over all entries, so a cluster of a few of them stays
    /// under it. Here 100,000 random keys (about 0.5 pairs mean) and 300
    /// keys that the table's hash (the key itself) puts in one home: the
    /// mean stays near 1.2, no rebuild, and the last of the 300 sits about
    /// 470 pairs past its home (a lookup of it, or of an absent key whose
    /// home is in that run, reads that many cache lines; the random keys
    /// alone end at about 45). At 1,000,000 entries 900 such keys go
    /// unnoticed and reach 1,700 pairs. foldhash's clustering of sequential
    /// ids seen so far was spread over the table (and judged), and peers
    /// cannot insert, so no case outside tests is known. A rebuild when one
    /// entry lands far past its home would catch it, but random keys alone
    /// land up to 150 pairs past theirs (230 once) as tables of 10,000 to
    /// 2,000,000 pairs fill to 80 %, so the bound would have to be several
    /// hundred pairs.
    #[test]
    #[ignore = "known shortcoming: a local cluster under the mean threshold is not rebuilt"]
    fn a_local_cluster_under_the_mean_is_rebuilt() {
        let mut t = Table::<E> {
            hash: KeyHash::Plain,
            first: KeyHash::Plain,
            ..Table::default()
        };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t.insert_new(E(Some(x)));
        }
        (0..300u64).for_each(|k| t.insert_new(E(Some(k))));
        let worst = t.iter().map(|e| t.past_home(e.0.unwrap()).unwrap()).max();
        assert!(worst < Some(256), "{worst:?} pairs past home, {:?}", t.hash);
    }

    /// A capacity beyond what can be allocated gives an empty table that
    /// works, not a panic or an abort.
    #[test]
    fn an_impossible_capacity_gives_a_growing_table() {
        for entries in [usize::MAX, usize::MAX / 64, 1 << 56] {
            let mut t = Table::<E>::with_capacity(entries);
            assert_eq!((t.len(), t.slots()), (0, 0));
            (0..100u64).for_each(|k| t.insert_new(E(Some(k))));
            assert!((0..100u64).all(|k| t.get(k) == Some(&E(Some(k)))));
        }
    }

    /// Long random sequences against a map: inserts of new keys (some of
    /// them engineered to share one home pair, key 0 and `u64::MAX`
    /// included), changes in place and lookups, from every starting size.
    /// After each growth and at the end: every key found with its value,
    /// no key twice in `iter`, `len` right, free keys absent.
    #[test]
    fn long_random_sequences_match_a_map() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Tables on the key itself (`Plain`) too, a quarter of their keys
        // from a counter spaced 2^64 / 5,000 apart (about 5,000 of them by
        // the end): clustered while the table is small,
        // spread once it is large, so the table goes to the finalizer and
        // back (see `a_table_rebuilt_at_one_size_goes_back_to_its_hash_when_that_spreads`).
        let (mut to_mix, mut back) = (0, 0);
        let starts = [0usize, 1, 2, 3, 7, 100].map(|s| (s, false));
        for (start, plain) in starts.into_iter().chain([(0, true), (7, true)]) {
            let mut t = if start == 0 {
                Table::<V>::default()
            } else {
                Table::with_capacity(start)
            };
            if plain {
                (t.hash, t.first) = (KeyHash::Plain, KeyHash::Plain);
            }
            let mut counter = 0u64;
            let mut model = std::collections::HashMap::new();
            let mut slots = t.slots();
            for step in 0..20_000u64 {
                let was_mix = matches!(t.hash, KeyHash::Mix(_));
                let key = match next() % 8 {
                    3 | 4 if plain => {
                        counter += 1;
                        counter.wrapping_mul(u64::MAX / 5_000)
                    }
                    0 => next() % 64,
                    1 => [0, u64::MAX, 1, u64::MAX - 1][(next() % 4) as usize],
                    // (Not for `Plain`, where a home holds 2^64 / pairs keys in a row.)
                    2 if t.slots() > 0 && !plain => {
                        // A key with the same home as an existing one.
                        let home = t.home(next());
                        let mut k = next();
                        while t.home(k) != home {
                            k = k.wrapping_add(1);
                        }
                        k
                    }
                    _ => next(),
                };
                match t.get_mut(key) {
                    Some(_) if next() % 3 == 0 => {
                        let removed = t.remove(key);
                        assert_eq!(removed, Some(V(Some(key), model[&key])), "step {step}");
                        model.remove(&key);
                        assert_eq!(t.get(key), None, "removed at {step}");
                        assert_eq!(t.probes, t.probes_recounted(), "step {step}");
                    }
                    Some(e) => {
                        assert_eq!(e.1, model[&key], "step {step}");
                        e.1 = step;
                        model.insert(key, step);
                    }
                    None => {
                        assert!(!model.contains_key(&key), "lost key {key} at {step}");
                        t.insert_new(V(Some(key), step));
                        model.insert(key, step);
                    }
                }
                assert_eq!(t.len(), model.len());
                let is_mix = matches!(t.hash, KeyHash::Mix(_));
                to_mix += usize::from(plain && !was_mix && is_mix);
                back += usize::from(plain && was_mix && !is_mix);
                if t.slots() != slots || was_mix != is_mix {
                    slots = t.slots();
                    check(&t, &model);
                }
            }
            check(&t, &model);
            // Every other key out, then checked again; absent keys remove nothing.
            let keys: Vec<u64> = model.keys().copied().step_by(2).collect();
            for k in keys {
                assert!(t.remove(k).is_some());
                model.remove(&k);
            }
            assert_eq!(t.remove(next()), None);
            assert_eq!(t.probes, t.probes_recounted());
            check(&t, &model);
        }

        assert!(to_mix > 0 && back > 0, "{to_mix} {back}");

        /// Every key found with its value, none twice, and the running
        /// probe count the real one.
        fn check(t: &Table<V>, model: &std::collections::HashMap<u64, u64>) {
            assert!(t.len() < t.slots(), "no free slot");
            let probes: usize = model.keys().map(|k| t.past_home(*k).unwrap()).sum();
            assert_eq!(probes, t.probes, "running probe count");
            let mut seen = std::collections::HashSet::new();
            for e in t.iter() {
                let k = e.0.unwrap();
                assert!(seen.insert(k), "{k} twice");
                assert_eq!(model.get(&k), Some(&e.1));
            }
            assert_eq!(seen.len(), model.len());
            for (k, v) in model {
                assert_eq!(t.get(*k), Some(&V(Some(*k), *v)));
            }
        }
    }
}
