//! Feeds the tunnel's sans-IO `FrameDecoder` arbitrary bytes in arbitrary reads.
//!
//! Input layout: byte 0 picks the read sizes (as in `smtp_session`: low nibble the
//! largest read, a non-zero high nibble makes them vary); the rest is the stream.
//!
//! Invariants checked:
//! - every decoded frame re-encodes, and the encoding decodes back to an equal
//!   frame with nothing left over;
//! - how the stream is cut into reads changes nothing: the frames (and whether the
//!   stream ends in an error) are the same as when it arrives in one read;
//! - no panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_shared::protocol::{encode, Frame, FrameDecoder};

const READ_SIZES: [usize; 16] = [usize::MAX, 1, 2, 3, 5, 8, 13, 64, 100, 256, 512, 1024, 7, 17, 31, usize::MAX];

/// Frames decoded from `reads`, and whether decoding stopped on an error (which
/// is final: the connection closes).
fn decode(reads: impl Iterator<Item = impl AsRef<[u8]>>) -> (Vec<Frame>, bool) {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    for read in reads {
        dec.push(read.as_ref());
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let [mode, stream @ ..] = data else { return };
    let max = READ_SIZES[usize::from(mode & 0x0f)];
    let vary = mode >> 4 != 0 && mode & 0x0f != 0;
    let mut state = u32::from(*mode);
    let mut reads = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let size = if vary {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            1 + (state >> 16) as usize % max
        } else {
            max
        };
        let (read, tail) = rest.split_at(size.min(rest.len()));
        reads.push(read);
        rest = tail;
    }

    let (frames, failed) = decode(reads.iter());
    let (whole, whole_failed) = decode(std::iter::once(stream));
    assert_eq!(frames, whole, "frames depend on how the stream was cut");
    assert_eq!(failed, whole_failed, "an error depends on how the stream was cut");

    for frame in &frames {
        let wire = encode(frame).expect("a decoded frame must re-encode");
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        let again = dec.next_frame().expect("a re-encoded frame must decode").expect("a re-encoded frame is complete");
        assert_eq!(&again, frame, "round trip changed the frame");
        assert!(matches!(dec.next_frame(), Ok(None)), "bytes left after a re-encoded frame");
    }
});
