//! Typed access to the kernel maps the live source reads and maintains. Every map is taken from
//! the loaded object through one routine ([`take`]), which names the map when it is missing or of
//! the wrong type.
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use aya::Ebpf;
use scanwatch_common::{
    stat, BlockEntry, FpKey, FpValue, SrcKey, MAP_BLOCKLIST, MAP_FINGERPRINTS, MAP_FIRST_CONTACT, MAP_KNOWN, MAP_SOURCES, MAP_SRC_OCCUPIED,
    MAP_STATS, MAP_SUSPECT,
};

/// Per-source state (the memory-mapped set-associative table).
pub type Sources = super::table::SourceTable;
/// Fingerprints by (source, hash).
pub type Fingerprints = BpfHashMap<MapData, FpKey, FpValue>;
/// Global per-CPU counters.
pub type Stats = PerCpuArray<MapData, [u64; stat::N as usize]>;
/// Bit filters (known sources, suspected ACK scanners).
pub type Bits = Array<MapData, u64>;
/// Inbound block list: source → reason code and what was dropped.
pub type Blocklist = BpfHashMap<MapData, SrcKey, BlockEntry>;

/// Take map `name` out of the loaded object and convert it to its typed handle.
pub fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map>,
    <T as TryFrom<Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf.take_map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).map_err(|e| anyhow::anyhow!("map {name}: {e}"))
}

/// The maps the live source reads every sweep.
pub struct KernelMaps {
    pub sources: Sources,
    pub fingerprints: Fingerprints,
    pub stats: Stats,
    pub known: Bits,
    pub suspect: Bits,
}

impl KernelMaps {
    pub fn take_all(ebpf: &mut Ebpf, opts: &crate::loader::LoadOptions) -> anyhow::Result<KernelMaps> {
        Ok(KernelMaps {
            sources: take_sources(ebpf, opts)?,
            fingerprints: take(ebpf, MAP_FINGERPRINTS)?,
            stats: take(ebpf, MAP_STATS)?,
            known: take(ebpf, MAP_KNOWN)?,
            suspect: take(ebpf, MAP_SUSPECT)?,
        })
    }

    /// The per-CPU counters, summed.
    pub fn totals(&self) -> [u64; stat::N as usize] {
        read_stats(&self.stats)
    }
}

/// The block list map (present only when the program was loaded with enforcement on).
pub fn take_blocklist(ebpf: &mut Ebpf) -> anyhow::Result<Blocklist> {
    take(ebpf, MAP_BLOCKLIST)
}

/// The raw first-contact map (memory-mapped by [`super::first_contact::FirstContactView`]).
pub fn take_first_contact(ebpf: &mut Ebpf) -> anyhow::Result<Map> {
    ebpf.take_map(MAP_FIRST_CONTACT).ok_or_else(|| anyhow::anyhow!("map {MAP_FIRST_CONTACT} missing from the eBPF object"))
}

/// Sum the per-CPU counters.
pub fn read_stats(stats: &Stats) -> [u64; stat::N as usize] {
    let mut out = [0u64; stat::N as usize];
    if let Ok(vals) = stats.get(&0, 0) {
        for v in vals.iter() {
            for (o, x) in out.iter_mut().zip(v.iter()) {
                *o += x;
            }
        }
    }
    out
}

/// The per-source table, mapped (`opts`: what it was loaded with).
pub fn take_sources(ebpf: &mut Ebpf, opts: &crate::loader::LoadOptions) -> anyhow::Result<Sources> {
    let missing = |name: &str| anyhow::anyhow!("map {name} missing from the eBPF object");
    let map = ebpf.take_map(MAP_SOURCES).ok_or_else(|| missing(MAP_SOURCES))?;
    let occupied = ebpf.take_map(MAP_SRC_OCCUPIED).ok_or_else(|| missing(MAP_SRC_OCCUPIED))?;
    super::table::SourceTable::new(map, occupied, opts)
}
