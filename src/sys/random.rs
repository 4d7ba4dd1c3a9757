//! Random bytes from the kernel (`getrandom`).

/// Fills `buf` with random bytes; false when the kernel could not fill it all (no entropy
/// source yet, or no `getrandom`): the caller falls back to something unique enough.
pub(crate) fn fill(buf: &mut [u8]) -> bool {
    let want = buf.len();
    matches!(
        rustix::rand::getrandom(buf, rustix::rand::GetRandomFlags::empty()),
        Ok(n) if n == want
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_the_buffer() {
        let mut b = [0u8; 32];
        assert!(super::fill(&mut b));
        assert_ne!(b, [0u8; 32]);
    }
}
