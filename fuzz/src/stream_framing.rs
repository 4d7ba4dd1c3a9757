//! `stream_framing`: the stream link's [`Decoder`] (QEMU `-netdev stream` framing, a 4-byte
//! big-endian length before each frame) on an arbitrary byte stream cut at arbitrary points.
//!
//! Input: a byte picking the maximum frame (64, 1514, 9000, 65535 bytes), then chunks, each a
//! length byte and that many stream bytes (fewer at the end), pushed one by one as reads would
//! deliver them; after each, the decoder is drained. Every third chunk, a frame taken from the
//! input is also encoded with [`encode_record`], so well-formed records are common.
//!
//! Invariants: the frames come out exactly as a one-shot reference parse of the whole stream
//! finds them, in order; a record over the maximum is reported exactly when its length prefix is
//! complete, and nothing comes out after it; once drained, the decoder holds less than one
//! record (`buffered < 4 + max_frame`) and its memory stays below `64 KiB + 4 + max_frame +` one
//! chunk; at the end, what is left is exactly the reference's incomplete tail.

use usernet::link::stream::{Decoder, encode_record};

use super::Reader;

const MAX_FRAMES: [usize; 4] = [64, 1514, 9000, 65535];
/// Bytes the decoder may keep consumed before compacting (see `src/link/stream.rs`).
const COMPACT_AT: usize = 64 * 1024;

/// What a one-shot parse of `stream` finds: the frames, and whether it stops at an oversize
/// record, and the bytes of the incomplete tail.
fn reference(stream: &[u8], max: usize) -> (Vec<&[u8]>, bool, usize) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let Some(p) = rest.first_chunk::<4>() else {
            return (frames, false, rest.len());
        };
        let len = u32::from_be_bytes(*p) as usize;
        if len > max {
            return (frames, true, rest.len());
        }
        if rest.len() - 4 < len {
            return (frames, false, rest.len());
        }
        frames.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
}

/// Runs one input; panics if an invariant breaks.
pub fn stream_framing(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = MAX_FRAMES[usize::from(r.u8()) % MAX_FRAMES.len()];
    let mut stream = Vec::new();
    let mut chunks = Vec::new();
    let mut i = 0usize;
    while !r.rest().is_empty() {
        let len = usize::from(r.u8());
        let n = len.min(r.rest().len());
        let bytes = &r.rest()[..n];
        let mut chunk = Vec::new();
        if i % 3 == 2 {
            encode_record(bytes, &mut chunk);
        } else {
            chunk.extend_from_slice(bytes);
        }
        // Repeat big chunks so lengths near and over the maximum are reachable.
        if len == 255 && n > 0 {
            let reps = usize::from(bytes[0]);
            for _ in 0..reps {
                chunk.extend_from_slice(bytes);
            }
        }
        for _ in 0..n {
            r.u8();
        }
        stream.extend_from_slice(&chunk);
        chunks.push(chunk);
        i += 1;
    }
    let (want, oversize, tail) = reference(&stream, max);

    let mut d = Decoder::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    let mut fed = 0usize;
    for chunk in &chunks {
        d.push(chunk);
        fed += chunk.len();
        loop {
            match d.next_frame(max) {
                Ok(Some(f)) => {
                    assert!(f.len() <= max, "frame of {} over max {max}", f.len());
                    got.push(f.to_vec());
                }
                Ok(None) => {
                    assert!(
                        d.buffered() < 4 + max,
                        "drained decoder holds {} bytes (max frame {max})",
                        d.buffered()
                    );
                    break;
                }
                Err(e) => {
                    assert!(e.len > max && e.max == max, "bad error {e:?}");
                    failed = true;
                    break;
                }
            }
        }
        assert!(
            d.held() <= COMPACT_AT + 4 + max + chunk.len(),
            "decoder holds {} bytes",
            d.held()
        );
        assert!(got.len() <= want.len(), "more frames than the stream has");
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(a.as_slice(), *b, "frames out of order or corrupted");
        }
        if failed {
            break;
        }
    }
    if failed {
        assert!(oversize, "decoder rejected a stream the reference accepts");
        assert_eq!(got.len(), want.len(), "frames before the oversize record");
    } else {
        assert!(
            !oversize || fed < stream.len(),
            "oversize record not reported"
        );
        assert_eq!(got.len(), want.len(), "frames lost");
        assert_eq!(d.buffered(), tail, "incomplete tail");
    }
}
