//! Arbitrary bytes through the frame decoder and the envelope decoder: no panic, no
//! buffer beyond `max_frame + 4`, no frame above the limit.
#![no_main]

use foundation_distributed::transport::frame::{self, FrameDecoder, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit, the rest is the stream.
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    let max = 64 + usize::from(limit) * 16;
    let mut decoder = FrameDecoder::new(max);
    let mut rest = stream;
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= max);
                    let _ = frame::decode(body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if rest.is_empty() {
            return;
        }
        match decoder.push(rest) {
            Ok(n) => rest = &rest[n..],
            Err(_) => return,
        }
        assert!(decoder.capacity() <= max + HEADER_LEN);
    }
});
