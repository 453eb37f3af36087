//! `Vec<u8>` fields as serde bytes (`#[serde(with = "crate::wire_bytes")]`).
//!
//! postcard writes a byte string exactly as it writes a sequence of `u8`: a
//! varint length, then the bytes, one byte each. So the wire format does not
//! change (old and new peers understand each other), but the message goes
//! through serde in one piece instead of byte by byte: for the tunnel's
//! Deliver frames that per-byte loop was about 2 % of the sandbox's CPU in
//! bench/inbound.

use serde::{de, Deserializer, Serializer};
use std::fmt;

pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(data)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// Formats that have no byte strings hand a sequence of numbers.
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsBytes {
        id: String,
        #[serde(with = "super")]
        data: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsSeq {
        id: String,
        data: Vec<u8>,
    }

    #[test]
    fn the_wire_format_is_that_of_a_sequence() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let id = "q1".to_string();
            let new = postcard::to_stdvec(&AsBytes {
                id: id.clone(),
                data: data.clone(),
            });
            let old = postcard::to_stdvec(&AsSeq {
                id: id.clone(),
                data: data.clone(),
            });
            let (Ok(new), Ok(old)) = (new, old) else {
                panic!("encoding failed");
            };
            assert_eq!(new, old);
            assert_eq!(
                postcard::from_bytes::<AsBytes>(&old).ok(),
                Some(AsBytes {
                    id: id.clone(),
                    data: data.clone()
                })
            );
            assert_eq!(
                postcard::from_bytes::<AsSeq>(&new).ok(),
                Some(AsSeq { id, data })
            );
        }
    }
}
