//! The frames of a bus message: texts (audit events, runtime alerts), each as a 4-byte
//! little-endian length and its bytes, the whole zstd-compressed. Receivers write them and
//! detectors read them (`kustody serve --bus`); a message that is not one is refused with a
//! reason, and decompression is bounded.

use std::io::Read;

/// A decompressed message's bound (a message holds at most a few megabytes of events).
pub const MAX_DECODED: u64 = 256 << 20;

/// Texts as one message body: each as a 4-byte little-endian length and its bytes, the whole
/// zstd-compressed.
///
/// # Errors
///
/// A text of 4 GiB or more, or a compressor failure.
pub fn encode<'a>(texts: impl Iterator<Item = &'a str>) -> Result<Vec<u8>, String> {
    let mut framed = Vec::new();
    for t in texts {
        let len = u32::try_from(t.len()).map_err(|_| format!("a text of {} bytes cannot be framed", t.len()))?;
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(t.as_bytes());
    }
    zstd::bulk::compress(&framed, 1).map_err(|e| format!("cannot compress a bus message: {e}"))
}

/// The texts of a message body, or why it cannot be read (bounded: a body that inflates
/// beyond [`MAX_DECODED`] is refused).
///
/// # Errors
///
/// Not zstd, inflating beyond the bound, a truncated frame, or a text that is not UTF-8.
pub fn decode(body: &[u8]) -> Result<Vec<String>, String> {
    decode_bounded(body, MAX_DECODED)
}

/// [`decode`] with another bound.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_bounded(body: &[u8], max: u64) -> Result<Vec<String>, String> {
    let mut framed = Vec::new();
    zstd::stream::read::Decoder::new(body)
        .map_err(|e| format!("not zstd: {e}"))?
        .take(max + 1)
        .read_to_end(&mut framed)
        .map_err(|e| format!("not zstd: {e}"))?;
    if framed.len() as u64 > max {
        return Err(format!("inflates beyond {max} bytes"));
    }
    let mut out = Vec::new();
    let mut rest = framed.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("a truncated length")?;
        let len = u32::from_le_bytes(*len) as usize;
        let text = tail.get(..len).ok_or("a truncated text")?;
        out.push(String::from_utf8(text.to_vec()).map_err(|_| "a text that is not UTF-8")?);
        rest = tail.get(len..).unwrap_or_default();
    }
    Ok(out)
}

/// Bodies of at most `limit` bytes holding `texts` in order (halved until each fits).
///
/// # Errors
///
/// When one text alone does not fit.
pub fn bodies(texts: &[&str], limit: usize) -> Result<Vec<Vec<u8>>, String> {
    let body = encode(texts.iter().copied())?;
    if body.len() <= limit {
        return Ok(vec![body]);
    }
    if texts.len() <= 1 {
        return Err(format!("an event of {} bytes does not fit in a bus message ({limit} bytes)", body.len()));
    }
    let (a, b) = texts.split_at(texts.len() / 2);
    let mut out = bodies(a, limit)?;
    out.extend(bodies(b, limit)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_split_to_fit() {
        let texts: Vec<String> = (0..50).map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 37))).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let one = bodies(&refs, 1 << 20).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(decode(&one[0]).unwrap(), texts);
        // incompressible texts and a small limit: split, in order
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let noise: Vec<String> =
            (0..20).map(|_| (0..400).map(|_| char::from(b'a' + (next() % 26) as u8)).collect()).collect();
        let refs: Vec<&str> = noise.iter().map(String::as_str).collect();
        let many = bodies(&refs, 1500).unwrap();
        assert!(many.len() > 1 && many.iter().all(|b| b.len() <= 1500));
        let back: Vec<String> = many.iter().flat_map(|b| decode(b).unwrap()).collect();
        assert_eq!(back, noise);
        assert!(bodies(&refs[..1], 10).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn bad_bodies_are_refused_not_panicked_on() {
        assert!(decode(b"not zstd").is_err());
        let truncated = zstd::bulk::compress(&[9, 0, 0, 0, b'a'], 1).unwrap();
        assert!(decode(&truncated).unwrap_err().contains("truncated"));
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 19).unwrap();
        assert!(bomb.len() < 1000);
        assert!(decode_bounded(&bomb, 1 << 16).unwrap_err().contains("inflates"));
    }
}
