//! The agent's view of the XDP program's per-source table (SOURCES): a set-associative array of
//! `SrcEntry` (address + state) the agent memory-maps read-only, so a sweep of the whole table
//! is a walk over memory, not two syscalls per source, and a lookup is the kernel's own set
//! computation (`src_set`) and at most `SRC_WAYS` compares.
//!
//! The kernel writes entries while they are read: a copy may be torn (a source admitted or
//! evicted mid-copy). A torn state is at worst one sweep's snapshot of mixed counters, which the
//! engine's delta logic treats like any other counter change; a torn key cannot match a lookup.
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Map, MapData};
use scanwatch_common::{addr_hash, src_set, src_sets, SrcEntry, SrcKey, SrcState, SRC_WAYS};

use crate::loader::LoadOptions;

/// Read-only mapping of SOURCES.
pub struct SourceTable {
    ptr: *const SrcEntry,
    len: usize,
    bytes: usize,
    sets: u32,
    seed: u32,
    _map: MapData,
}

// SAFETY: the mapping is read-only shared memory; the table owns it (and the map's fd).
unsafe impl Send for SourceTable {}
// SAFETY: only reads (volatile copies) go through the pointer.
unsafe impl Sync for SourceTable {}

impl SourceTable {
    /// Map SOURCES as loaded with `opts` (its size and set-index seed).
    pub fn new(map: Map, opts: &LoadOptions) -> anyhow::Result<SourceTable> {
        let Map::Array(map) = map else {
            anyhow::bail!("{} is not an array map (an eBPF object of another version?)", scanwatch_common::MAP_SOURCES);
        };
        let sets = src_sets(opts.max_sources);
        let len = (sets * SRC_WAYS) as usize;
        let info = map.info().map_err(|e| anyhow::anyhow!("{}: {e}", scanwatch_common::MAP_SOURCES))?;
        anyhow::ensure!(
            info.max_entries() as usize == len && info.value_size() as usize == std::mem::size_of::<SrcEntry>(),
            "{}: {} entries of {} bytes, expected {len} of {}",
            scanwatch_common::MAP_SOURCES,
            info.max_entries(),
            info.value_size(),
            std::mem::size_of::<SrcEntry>()
        );
        let bytes = len * std::mem::size_of::<SrcEntry>();
        // SAFETY: mapping a BPF array's value area read-only; checked for failure below.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ, libc::MAP_SHARED, map.fd().as_fd().as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            anyhow::bail!("cannot map the per-source table: {}", std::io::Error::last_os_error());
        }
        Ok(SourceTable { ptr: p as *const SrcEntry, len, bytes, sets, seed: opts.source_seed, _map: map })
    }

    /// Slots (free or not).
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// The address of slot `i` (all zero: free).
    fn key_at(&self, i: usize) -> SrcKey {
        debug_assert!(i < self.len);
        // SAFETY: `i` is within the mapping; the key is the entry's first 16 bytes.
        unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*self.ptr.add(i)).key)) }
    }

    /// The state of slot `i`.
    fn state_at(&self, i: usize) -> SrcState {
        debug_assert!(i < self.len);
        // SAFETY: `i` is within the mapping; SrcState is plain integers (any bit pattern valid).
        unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*self.ptr.add(i)).state)) }
    }

    /// The slot of `key`, found as the kernel finds it (the first matching way of its set).
    fn slot_of(&self, key: &SrcKey) -> Option<usize> {
        if key.addr == [0; 16] {
            return None;
        }
        let w = key_words(key);
        let base = (src_set(addr_hash(&w), self.sets, self.seed) * SRC_WAYS) as usize;
        (base..base + SRC_WAYS as usize).find(|&i| i < self.len && self.key_at(i) == *key)
    }

    /// A copy of `key`'s state, if the source has a slot.
    pub fn get(&self, key: &SrcKey) -> Option<SrcState> {
        let i = self.slot_of(key)?;
        let st = self.state_at(i);
        // Re-check the key: the slot may have been given to another source during the copy.
        (self.key_at(i) == *key).then_some(st)
    }

    /// The sources with a slot, each once (a source two CPUs admitted at the same instant may
    /// hold two ways of its set: the kernel uses the first, and so does this).
    pub fn keys(&self) -> Vec<SrcKey> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for i in 0..self.len {
            let k = self.key_at(i);
            if k.addr != [0; 16] && seen.insert(k) {
                out.push(k);
            }
        }
        out
    }

    /// Sources with a slot.
    pub fn live(&self) -> usize {
        self.keys().len()
    }
}

impl Drop for SourceTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.bytes) };
    }
}

/// The address as the kernel's two native-endian words.
fn key_words(key: &SrcKey) -> [u64; 2] {
    let (a, b) = key.addr.split_at(8);
    [u64::from_ne_bytes(a.try_into().expect("8 bytes")), u64::from_ne_bytes(b.try_into().expect("8 bytes"))]
}
