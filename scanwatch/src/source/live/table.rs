//! The agent's view of the XDP program's per-source table (SOURCES): a set-associative array of
//! `SrcEntry` (address + state), read in batches (BPF_MAP_LOOKUP_BATCH: one syscall per run of
//! occupied sets, at most [`CHUNK`] slots each, so a sweep of a full default 16,384-slot table is
//! 16 syscalls, and one of a mostly empty table reads only the sets the program marked in
//! SRC_OCCUPIED) and looked up the way the kernel does (`src_set`, then at most `SRC_WAYS`
//! slots, one syscall).
//!
//! The kernel writes entries while they are copied: a copy may be torn (a source admitted or
//! evicted mid-copy). A torn state is at worst one snapshot of mixed counters, which the
//! engine's delta logic treats like any other counter change; a lookup re-checks the key.
//! Not memory-mapped on purpose: a mapping of the whole table would count its 14 MiB (up to
//! 0.9 GiB at the largest `xdp.max_sources`) in the agent's resident set.
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Map, MapData};
use scanwatch_common::{addr_hash, src_set, src_sets, SrcEntry, SrcKey, SrcState, MAP_SOURCES, MAP_SRC_OCCUPIED, SRC_WAYS};

use crate::loader::LoadOptions;

/// Slots read per syscall (a multiple of `SRC_WAYS`: a set is never split between two reads).
pub const CHUNK: usize = 1024;
const _: () = assert!(CHUNK % SRC_WAYS as usize == 0);

/// SOURCES as the agent reads it.
pub struct SourceTable {
    map: MapData,
    occupied: MapData,
    len: usize,
    sets: u32,
    seed: u32,
}

impl SourceTable {
    /// SOURCES as loaded with `opts` (its size and set-index seed).
    pub fn new(map: Map, occupied: Map, opts: &LoadOptions) -> anyhow::Result<SourceTable> {
        let (Map::Array(map), Map::Array(occupied)) = (map, occupied) else {
            anyhow::bail!("{MAP_SOURCES} / {MAP_SRC_OCCUPIED} are not array maps (an eBPF object of another version?)");
        };
        let sets = src_sets(opts.max_sources);
        let len = (sets * SRC_WAYS) as usize;
        let info = map.info().map_err(|e| anyhow::anyhow!("{MAP_SOURCES}: {e}"))?;
        anyhow::ensure!(
            info.max_entries() as usize == len && info.value_size() as usize == std::mem::size_of::<SrcEntry>(),
            "{MAP_SOURCES}: {} entries of {} bytes, expected {len} of {}",
            info.max_entries(),
            info.value_size(),
            std::mem::size_of::<SrcEntry>()
        );
        Ok(SourceTable { map, occupied, len, sets, seed: opts.source_seed })
    }

    /// Copy slots `start..start + n` (clamped to the table) into `out` (cleared first).
    pub fn read(&self, start: usize, n: usize, out: &mut Vec<SrcEntry>) -> std::io::Result<()> {
        batch_read(&self.map, self.len, start, n, out)
    }

    /// The occupied sets as runs of slots (start, count), in table order. If the marks cannot
    /// be read, the whole table (nothing is skipped).
    pub fn occupied_runs(&self) -> Vec<(usize, usize)> {
        let words = (self.sets as usize).div_ceil(8);
        let mut marks: Vec<u64> = Vec::new();
        if let Err(e) = batch_read(&self.occupied, words, 0, words, &mut marks) {
            log::warn!("cannot read {MAP_SRC_OCCUPIED} (reading the whole table): {e}");
            return vec![(0, self.len)];
        }
        let ways = SRC_WAYS as usize;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (w, word) in marks.iter().enumerate() {
            if *word == 0 {
                continue;
            }
            for (b, byte) in word.to_ne_bytes().iter().enumerate() {
                let set = w * 8 + b;
                if *byte == 0 || set >= self.sets as usize {
                    continue;
                }
                match runs.last_mut() {
                    Some((start, n)) if *start + *n == set * ways => *n += ways,
                    _ => runs.push((set * ways, ways)),
                }
            }
        }
        runs
    }

    /// Visit every source in the slot runs `runs` (see [`Self::occupied_runs`]), each once (a
    /// source two CPUs admitted at the same instant may hold two ways of its set: the kernel
    /// uses the first, and so does this).
    pub fn visit(&self, runs: &[(usize, usize)], buf: &mut Vec<SrcEntry>, mut f: impl FnMut(&SrcEntry)) -> std::io::Result<()> {
        for &(start, n) in runs {
            let end = (start + n).min(self.len);
            let mut at = start;
            while at < end {
                let step = CHUNK.min(end - at);
                self.read(at, step, buf)?;
                for set in buf.chunks(SRC_WAYS as usize) {
                    for (i, e) in set.iter().enumerate() {
                        if e.key.addr != [0; 16] && !set[..i].iter().any(|o| o.key == e.key) {
                            f(e);
                        }
                    }
                }
                at += step;
            }
        }
        Ok(())
    }

    /// A copy of `key`'s state, if the source has a slot (found as the kernel finds it).
    pub fn get(&self, key: &SrcKey) -> Option<SrcState> {
        let mut way = u8::MAX; // unknown: the whole set, as the kernel looks it up
        self.get_at(key, &mut way, &mut Vec::new())
    }

    /// `get` for a reader that remembers where each source was: reads the one slot `*way`
    /// names (a quarter of the set) and, when the source is no longer there (evicted,
    /// re-admitted in another way) or `*way` is unknown (`u8::MAX`), the whole set, updating
    /// `*way`. `buf` is scratch space. Only for a table that one CPU writes (a replay, its
    /// kernel thread held on one CPU): with several, a source two CPUs admitted at once may
    /// hold two ways, and the kernel's is the first, which a hint may skip.
    pub fn get_at(&self, key: &SrcKey, way: &mut u8, buf: &mut Vec<SrcEntry>) -> Option<SrcState> {
        if key.addr == [0; 16] {
            return None;
        }
        let base = (src_set(addr_hash(&key.words()), self.sets, self.seed) * SRC_WAYS) as usize;
        if u32::from(*way) < SRC_WAYS {
            self.read(base + usize::from(*way), 1, buf).ok()?;
            if let Some(e) = buf.first().filter(|e| e.key == *key) {
                return Some(e.state);
            }
        }
        self.read(base, SRC_WAYS as usize, buf).ok()?;
        let i = buf.iter().position(|e| e.key == *key);
        *way = i.map_or(u8::MAX, |i| i as u8);
        i.map(|i| buf[i].state)
    }

    /// The sources with a slot, each once.
    pub fn keys(&self) -> Vec<SrcKey> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut buf = Vec::new();
        if let Err(e) = self.visit(&self.occupied_runs(), &mut buf, |e| {
            if seen.insert(e.key) {
                out.push(e.key);
            }
        }) {
            log::warn!("cannot read {MAP_SOURCES}: {e}");
        }
        out
    }

    /// Sources with a slot.
    pub fn live(&self) -> usize {
        self.keys().len()
    }
}

/// Copy elements `start..start + n` (clamped to `len`) of array map `map` into `out` (cleared
/// first) with BPF_MAP_LOOKUP_BATCH. `V` must be the map's value type (plain integers).
fn batch_read<V: Copy>(map: &MapData, len: usize, start: usize, n: usize, out: &mut Vec<V>) -> std::io::Result<()> {
    out.clear();
    let n = n.min(len.saturating_sub(start));
    if n == 0 {
        return Ok(());
    }
    let mut keys = vec![0u32; n];
    out.reserve(n);
    // The kernel continues after the key in `in_batch` (none: from element 0).
    let prev = start.saturating_sub(1) as u32;
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: if start == 0 { 0 } else { &prev as *const u32 as u64 },
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: out.as_mut_ptr() as u64,
        count: n as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: bpf(2) with a valid attr of the size passed; the kernel writes at most `count`
    // keys and values into buffers of that capacity (`n` each).
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>() as u32) };
    // ENOENT: the end of the map was reached; `count` says how many were copied.
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    let got = (attr.count as usize).min(n);
    // SAFETY: the kernel initialised the first `got` values; `V` is plain integers.
    unsafe { out.set_len(got) };
    Ok(())
}

/// `union bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
