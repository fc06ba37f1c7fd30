//! Reading lines of a log without trusting it: a file with no newline in it must not
//! be read into memory whole.

use std::io::BufRead;

/// The longest line kept: the rest of a longer one is skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// Appends the next line (with its newline, if it has one) to `buf`, keeping at most
/// [`MAX_LINE`] bytes of it; returns the bytes consumed, 0 at the end.
pub fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(consumed);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        consumed += take;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_the_bound_and_the_rest_skipped() {
        let mut text = vec![b'x'; MAX_LINE + 10];
        text.extend_from_slice(b"\nnext\n");
        let mut r = std::io::BufReader::with_capacity(1000, &text[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), MAX_LINE + 11);
        assert_eq!(buf.len(), MAX_LINE);
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), 5);
        assert_eq!(buf, b"next\n");
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), 0);
    }
}
