//! The shard of a routing key (a customer or anonymous id): zlib's CRC-32 of its UTF-8 bytes modulo
//! the shard count, as `zlib.crc32(key.encode()) % shards` gives it (the same on every machine and
//! run), without making the bytes.

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, byte| {
        TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8)
    })
}

const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut crc = n as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[n] = crc;
        n += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b"u-005570"), 0xd928_189a);
        assert_eq!(crc32("caf\u{e9}".as_bytes()), 0x98ad_42b5);
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::exceptions::PyZeroDivisionError;
    use pyo3::prelude::*;

    /// A stable shard number for a routing key, a customer or anonymous id: ``zlib.crc32(key.encode())
    /// % shards`` (the same on every machine and run).
    #[pyfunction]
    pub fn shard_of(key: &str, shards: u32) -> PyResult<u32> {
        if shards == 0 {
            return Err(PyZeroDivisionError::new_err("no shards to route to"));
        }
        Ok(super::crc32(key.as_bytes()) % shards)
    }
}
