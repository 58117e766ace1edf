//! Arbitrary bytes through the frame decoder and the record opener of `secret` mode:
//! no panic, no buffer beyond `max_frame + 16 + 4`, and nothing ever opens (the key is
//! fixed, but opening anything would mean forging AES-GCM).
#![no_main]

use bytes::BytesMut;
use foundation_distributed::transport::frame::{self, FrameDecoder, HEADER_LEN};
use foundation_distributed::transport::record::{Opener, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    let max = 64 + usize::from(limit) * 16;
    let mut decoder = FrameDecoder::new(max + TAG_LEN);
    let mut opener = Opener::new(&[0x42; 32]);
    let mut rest = stream;
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= max + TAG_LEN);
                    let mut body = BytesMut::from(&body[..]);
                    assert!(opener.open(&mut body).is_err(), "a forged record opened");
                    let _ = frame::decode(body.freeze());
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
        assert!(decoder.capacity() <= max + TAG_LEN + HEADER_LEN);
    }
});
