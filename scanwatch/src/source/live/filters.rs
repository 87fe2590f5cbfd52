//! Filters the XDP program reads and the agent maintains: the known-source filter (rebuilt from
//! the live SOURCES keys) and the suspected-ACK-scanner filter (cleared periodically).
use super::maps::{Bits, Sources};

/// Rebuild the XDP program's known-source filter from the sources that have state now. Bits of
/// evicted sources otherwise stay set forever, and a saturated filter makes every new source
/// pay a SOURCES lookup. A source admitted while this runs may lose its bit: its next packet
/// then passes the first-contact table once more and finds its state (nothing is lost).
/// Returns the number of bits set.
pub fn rebuild_known_filter(
    sources: &Sources,
    known: &mut Bits,
) -> anyhow::Result<u32> {
    let mut words = vec![0u64; scanwatch_common::KNOWN_WORDS as usize];
    for key in sources.keys() {
        let (word, bit) = scanwatch_common::known_bit(scanwatch_common::addr_hash(&key.words()));
        words[word as usize] |= bit;
    }
    for (i, w) in words.iter().enumerate() {
        known.set(i as u32, *w, 0)?;
    }
    Ok(words.iter().map(|w| w.count_ones()).sum())
}

/// Forget which sources were suspected of orphan-ACK probing (their bare ACKs go back to one
/// lookup in `ACK_SAMPLE`): a legitimate client with one stray late ACK is not looked up forever.
pub fn clear_suspects(suspect: &mut Bits) -> anyhow::Result<()> {
    for i in 0..scanwatch_common::SUSPECT_WORDS {
        suspect.set(i, 0, 0)?;
    }
    Ok(())
}

