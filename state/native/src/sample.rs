//! The deterministic sample of events: BLAKE2b (RFC 7693) with a 2-byte digest, unkeyed, as
//! Python's `hashlib.blake2b(data, digest_size=2)` computes it, without building a hash object
//! per event.

const IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

const SIGMA: [[usize; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

const BLOCK: usize = 128;
const DIGEST_BYTES: u64 = 2;

fn mix(v: &mut [u64; 16], a: usize, b: usize, c: usize, d: usize, x: u64, y: u64) {
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

fn compress(h: &mut [u64; 8], block: &[u8; BLOCK], bytes: u128, last: bool) {
    let mut m = [0u64; 16];
    for (word, chunk) in m.iter_mut().zip(block.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    let mut v = [0u64; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= bytes as u64;
    v[13] ^= (bytes >> 64) as u64;
    if last {
        v[14] = !v[14];
    }
    for round in 0..12 {
        let s = &SIGMA[round % 10];
        mix(&mut v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
        mix(&mut v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
        mix(&mut v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
        mix(&mut v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
        mix(&mut v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
        mix(&mut v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
        mix(&mut v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
        mix(&mut v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for i in 0..8 {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/// The 2-byte BLAKE2b digest of `data`.
pub fn blake2b_2(data: &[u8]) -> [u8; 2] {
    let mut h = IV;
    h[0] ^= 0x0101_0000 ^ DIGEST_BYTES;
    let mut done: u128 = 0;
    let mut rest = data;
    while rest.len() > BLOCK {
        let (block, tail) = rest.split_at(BLOCK);
        done += BLOCK as u128;
        compress(&mut h, block.try_into().expect("a block"), done, false);
        rest = tail;
    }
    let mut last = [0u8; BLOCK];
    last[..rest.len()].copy_from_slice(rest);
    compress(&mut h, &last, done + rest.len() as u128, true);
    let bytes = h[0].to_le_bytes();
    [bytes[0], bytes[1]]
}

/// Whether an event is in the sample of one in `every`: the first digest byte of its id.
pub fn sampled(message_id: &str, every: u8) -> bool {
    every != 0 && blake2b_2(message_id.as_bytes())[0] % every == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_blake2b_with_two_bytes() {
        // From Python's hashlib.blake2b(data, digest_size=2).
        assert_eq!(blake2b_2(b""), [0xb1, 0xfe]);
        assert_eq!(blake2b_2(b"abc"), [0xae, 0x1e]);
        assert_eq!(
            blake2b_2(b"ajs-6f7a1c0e-5d2b-4f4e-9d5a-0c1b2e3f4a5b"),
            [0x18, 0xdc]
        );
        assert_eq!(blake2b_2(&[b'x'; 128]), [0xfe, 0x9b], "exactly one block");
        assert_eq!(
            blake2b_2(&[b'y'; 129]),
            [0x17, 0x49],
            "one byte into a second block"
        );
        assert_eq!(blake2b_2("é".repeat(100).as_bytes()), [0x59, 0xe2]);
    }

    #[test]
    fn one_in_every_is_sampled() {
        let hits = (0..10_000)
            .filter(|n| sampled(&format!("m{n}"), 50))
            .count();
        assert!((150..260).contains(&hits), "{hits}");
        assert!(!sampled("abc", 0));
    }
}
