//! The floor under the stream phase: the least a streamed GiB can cost on
//! this machine. kubegate reads it from the upstream's TLS and writes it
//! to a plain client, so each byte is decrypted once (AES-128-GCM, the
//! TLS 1.3 suite kubegate offers first and Go's apiserver picks) and
//! copied twice (out of the kernel, back into it). Measured in one
//! thread, in 16 KiB records as TLS carries them. The kernel's own work
//! on the socket is not in it.

use std::time::Instant;

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// TLS's largest record.
const RECORD: usize = 16 * 1024;

/// Seconds per GiB for one decryption and two copies: the best of three
/// passes over 256 MiB.
pub fn aes_gcm_seconds_per_gib() -> f64 {
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).expect("a 16-byte key"));
    let nonce = || Nonce::assume_unique_for_key([1; 12]);
    let mut sealed = vec![0x5a; RECORD];
    key.seal_in_place_append_tag(nonce(), Aad::empty(), &mut sealed)
        .expect("the record seals");
    let mut work = vec![0; sealed.len()];
    let mut out = vec![0; RECORD];
    let records = (256 << 20) / RECORD;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let began = Instant::now();
        for _ in 0..records {
            work.copy_from_slice(&sealed);
            let plain = key
                .open_in_place(nonce(), Aad::empty(), &mut work)
                .expect("the record opens");
            out.copy_from_slice(plain);
            std::hint::black_box(&out);
        }
        best = best.min(began.elapsed().as_secs_f64() * 4.0);
    }
    best
}
