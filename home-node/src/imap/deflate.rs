//! COMPRESS=DEFLATE (RFC 4978): raw deflate both ways once the client asked,
//! each burst of output ending in a sync flush so the client can read it.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Largest output of one decompression call; more is an abuse (a "zip bomb").
const MAX_INFLATE: usize = 8 * 1024 * 1024;

pub struct Deflate {
    c: Compress,
    d: Decompress,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            c: Compress::new(Compression::fast(), false),
            d: Decompress::new(false),
        }
    }
}

impl Deflate {
    pub fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut pos = 0;
        loop {
            out.reserve(4096);
            let before = self.c.total_in();
            let status = self
                .c
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync);
            pos += (self.c.total_in() - before) as usize;
            match status {
                Ok(Status::Ok) | Ok(Status::BufError)
                    if pos >= input.len() && out.len() < out.capacity() =>
                {
                    break
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// None when the input is not deflate data or inflates too much.
    pub fn decompress(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            out.reserve(16 * 1024);
            let before = self.d.total_in();
            let status = self
                .d
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                .ok()?;
            pos += (self.d.total_in() - before) as usize;
            if out.len() > MAX_INFLATE {
                return None;
            }
            if status == Status::StreamEnd || (pos >= input.len() && out.len() < out.capacity()) {
                return Some(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut a = Deflate::default();
        let mut b = Deflate::default();
        let text: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let mut got = Vec::new();
        for chunk in text.chunks(7000) {
            let z = a.compress(chunk);
            for piece in z.chunks(1000) {
                got.extend(b.decompress(piece).unwrap());
            }
        }
        assert_eq!(got, text);
        assert!(Deflate::default()
            .decompress(b"\xff\xff\xff\xff garbage")
            .is_none());
    }
}
